"""Sweep specs: YAML -> a validated `Spec`, or one `SPEC:LINE: key: expected` error.

Everything a sweep needs is checked here, before Ray starts and before any MLflow run
exists: unknown keys, types and ranges of every trial field (by building the typed config
dataclasses), `space` paths and whether each distribution's values fit its field, the
search/space combination, the experiment name (it becomes a folder), and the resources the
trials ask for against what the machine has. The file is parsed with `yaml.safe_load`;
a second, node-level parse (also the safe loader) only records line numbers.
The full format is documented in docs/spec.md.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from models.errors import ConfigError
from models.registry import RegistryError
from nlsweep.config.builder import as_number, build, flatten, get_path, set_path, to_dict
from nlsweep.config.plugins import (
    Plugin,
    PluginError,
    import_again,
    load_entry_points,
    load_plugins,
)
from nlsweep.config.resources import Resources, check_resources, local_resources
from nlsweep.config.seeds import ReportConfig, SeedsConfig, seed_sequence
from nlsweep.config.space import (
    CONTINUOUS,
    Choice,
    Distribution,
    Grid,
    RandInt,
    SchedulerConfig,
    SearchConfig,
    SearchPlan,
    as_spec,
    candidate_values,
    parse_distribution,
    translate,
)
from nlsweep.config.specfile import Reporter, SpecError, apply_override, line_map, refuse_aliases
from nlsweep.evaluation.config import EvalConfig
from nlsweep.spec.variants import (
    NAME_RE,
    VARIANT,
    apply_point,
    check_variant_factor,
    parse_variants,
)
from nlsweep.tracking.config import DEFAULT_TRACKING_URI, TrackingConfig, absolute_uri
from nlsweep.training.evaluators import objectives, reporters
from nlsweep.training.trial import TrialConfig

TOP_KEYS = (
    "name",
    "baseline",
    "variants",
    "description",
    "metric",
    "mode",
    "base",
    "space",
    "search",
    "scheduler",
    "resources",
    "max_concurrent",
    "max_failures",
    "preempt_grace_s",
    "storage",
    "tracking_uri",
    "tracking",
    "plugins",
    "eval",
    "seeds",
    "report",
)
DEFAULT_MAX_FAILURES = 1
DEFAULT_PREEMPT_GRACE_S = 30.0
SEED_PATH = "train.seed"
SMOKE_STEPS = 20


@dataclass
class Spec:
    name: str
    description: str
    metric: str
    mode: Literal["min", "max"]
    base: TrialConfig
    base_raw: dict
    space: dict[str, Distribution]
    search: SearchConfig
    scheduler: SchedulerConfig
    resources: Resources
    max_concurrent: int
    storage: str
    tracking_uri: str
    path: str
    sha256: str
    lines: dict[str, int] = field(default_factory=dict)
    """Dotted key -> line in the spec file, for error messages raised after loading."""
    baseline: dict[str, Any] = field(default_factory=dict)
    """The reference configuration of the swept factors (grid search), seeds excluded."""
    text: str = ""
    """The spec file's text, recorded with the sweep so reports can quote it."""
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Named bundles of base overrides (dotted path -> value), swept by `space.variant`."""
    max_failures: int = DEFAULT_MAX_FAILURES
    """Times a trial that raised is retried from its newest checkpoint before it is FAILED."""
    preempt_grace_s: float = DEFAULT_PREEMPT_GRACE_S
    """On a stop signal, seconds the running trials have to checkpoint where they are before
    Tune stops them (0: they resume from their last periodic checkpoint); not part of the
    fingerprint (no trial changes)."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """What reaches MLflow besides metrics; not part of the fingerprint (no trial changes)."""
    tracking_uri_relative: bool = False
    """The spec's tracking URI was relative (as the default is) and made absolute against
    the working folder: a resume from elsewhere takes the store its sweep started with."""
    plugins: list[Plugin] = field(default_factory=list)
    """The plugins imported for this spec (`plugins:` and installed entry points)."""
    eval: EvalConfig | None = None
    """lm-eval tasks run on each trial's final model (`nlsweep/evaluation/config.py`); not
    part of the fingerprint (no trial trains differently)."""
    seeds: SeedsConfig = field(default_factory=SeedsConfig)
    """`seeds.adaptive`: seeds added in rounds to undecided rows (`nlsweep/config/seeds.py`);
    the space's `train.seed` grid then holds the first `min` seeds."""
    report: ReportConfig = field(default_factory=ReportConfig)
    """What the report computes beyond its fixed statistics; not part of the fingerprint."""
    plan: SearchPlan = field(init=False)

    def __post_init__(self):
        self.plan = translate(self.space, self.search)

    @property
    def fingerprint(self) -> str:
        """Hash of everything that decides which trials run and how (after --set and --smoke);
        an interrupted sweep resumes only under the same fingerprint."""
        return hashlib.sha256(json.dumps(self.fixed, sort_keys=True).encode()).hexdigest()

    @property
    def fixed(self) -> dict:
        """What the fingerprint hashes, as JSON-ready data (kept beside the experiment, so
        that `--extend` can say what changed)."""
        fixed = {
            "name": self.name,
            "metric": self.metric,
            "mode": self.mode,
            "base": self.base_raw,
            "space": {p: as_spec(d) for p, d in self.space.items()},
            "variants": self.variants,
            **{k: to_dict(getattr(self, k)) for k in ("search", "scheduler", "resources")},
            "max_concurrent": self.max_concurrent,
            "max_failures": self.max_failures,
        }
        if self.seeds.adaptive is not None:  # it decides which trials run
            fixed["seeds"] = to_dict(self.seeds)
        if self.plugins:  # a plugin whose code changed runs other trials
            fixed["plugins"] = {p.name: p.digest for p in self.plugins}
        return json.loads(json.dumps(fixed, default=str))

    def import_plugins(self) -> None:
        """Import the spec's plugins in this process (a Ray worker) by their names."""
        import_again(self.plugins)

    def trial_config(self, values: dict[str, Any]) -> TrialConfig:
        """The trial config for one point of the space (dotted path -> value)."""
        return TrialConfig.from_dict(apply_point(self.base_raw, self.variants, values))


def _check_batch_split(workers: int, base, space: dict, variants: dict, err: Reporter) -> None:
    """Every batch size a trial can get splits evenly over the trial's workers."""
    if workers == 1:
        return
    path = "data.batch_size"
    where = {f"base.{path}": [base.data.batch_size]}
    if path in space:
        where[f"space.{path}"] = list(candidate_values(space[path]))
    for name, overrides in variants.items():
        if path in overrides:
            where[f"variants.{name}.{path}"] = [overrides[path]]
    for key, sizes in where.items():
        for b in sizes:
            if b % workers:
                err(key, f"a multiple of resources.workers ({workers}), got {b}")


def _parse_space(
    space_raw, base: TrialConfig, base_raw: dict, variants: dict, err: Reporter
) -> dict:
    """`space:` -> {path: distribution}, every value checked against its base field."""
    if not isinstance(space_raw, dict):
        err("space", "a mapping of dotted paths into base -> distribution")
    base_dict = to_dict(base)
    known = flatten(base_dict)
    space: dict[str, Distribution] = {}
    for p, raw in space_raw.items():
        key = f"space.{p}"
        if p == VARIANT:
            try:
                space[p] = parse_distribution(raw)
            except ConfigError as e:
                err(key, e.expected)
            check_variant_factor(space[p], variants, space_raw, err)
            continue
        if not isinstance(p, str) or p not in known:
            err(key, f"a path into base, e.g. {', '.join(list(known)[:4])}, ...")
        try:
            dist = parse_distribution(raw)
        except ConfigError as e:
            err(key, e.expected if e.key == "distribution" else f"{e.key}: {e.expected}")
        current = get_path(base_dict, p)
        if isinstance(current, float) and isinstance(dist, (Grid, Choice)):
            dist = type(dist)(tuple(as_number(v) for v in dist.values))  # 1e-3 is a float
        kind = type(current).__name__
        if isinstance(dist, CONTINUOUS) and not isinstance(current, float):
            err(key, f"a distribution over {kind} values (uniform and loguniform draw real "
                     "numbers; use randint, choice or grid)")  # fmt: skip
        if isinstance(dist, RandInt) and not isinstance(current, (int, float)):
            err(key, f"a distribution over {kind} values, not randint")
        for v in candidate_values(dist):
            try:
                TrialConfig.from_dict(set_path(base_raw, p, v))
            except ConfigError as e:
                err(key, f"values valid for base.{p}; {v!r} gives {e.key}: {e.expected}")
        space[p] = dist
    return space


def load_spec(
    path: str | os.PathLike,
    overrides: list[str] | tuple = (),
    smoke: bool = False,
    tracking_uri: str | None = None,
    storage: str | None = None,
    available: dict[str, float] | None = None,
) -> Spec:
    """Parse and validate a spec; raises SpecError. `available` defaults to this machine."""
    file = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise SpecError(file, 0, "file", f"a readable YAML spec ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise SpecError(
            file, line, "file", f"UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})"
        ) from None
    refuse_aliases(text, file)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(file, line, "yaml", f"valid YAML ({problem})") from None
    err = Reporter(file, line_map(text))
    if not isinstance(data, dict):
        err("spec", "a mapping with keys name, metric, base, space, ...")
    for item in overrides:
        data = apply_override(data, item, err)
    for k in data:
        if k not in TOP_KEYS:
            err(str(k), f"unknown key; expected one of {', '.join(TOP_KEYS)}")
    try:  # before validation: what plugins register is known to it
        spec_dir = Path(file).resolve().parent
        plugins = load_entry_points() + load_plugins(data.get("plugins"), spec_dir)
    except PluginError as e:
        err("plugins" if e.index is None else f"plugins[{e.index}]", str(e))

    name = data.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        err("name", f"a safe folder name matching [A-Za-z0-9_-]+, got {name!r}")
    metric = data.get("metric", "val/bpc")
    mode = data.get("mode")
    if mode not in (None, "min", "max"):
        err("mode", f"min or max, got {mode!r}")
    description = data.get("description", "")
    if not isinstance(description, str):
        err("description", "a string")

    base_raw = data.get("base")
    if not isinstance(base_raw, dict):
        err("base", "a mapping with sections model, cms, optim, data, train")
    if smoke:
        base_raw = _smoke(base_raw)
    base_raw = _absolute_data_path(base_raw)
    try:
        base = TrialConfig.from_dict(base_raw)
    except ConfigError as e:
        err(f"base.{e.key}", e.expected)
    # What the trials report is what their corpus and evaluators declare (evaluators.py).
    try:
        reported = objectives(base)
    except RegistryError as e:
        err("base.train.evaluators", str(e))
    if metric not in reported:
        named = ", ".join(["heldout", *(base.train.evaluators or {})])
        others = reporters(str(metric), base)
        hint = f"; {metric} is reported by {' or '.join(others)}" if others else ""
        err("metric", f"one of {', '.join(reported)} (what corpus {base.data.corpus} and "
            f"evaluators {named} report), got {metric!r}{hint}")  # fmt: skip
    if mode is None:
        mode = reported[metric]  # the declared better direction
    elif mode != reported[metric]:
        err(
            "mode",
            f"{reported[metric]} for {metric} (its evaluator declares "
            f"{'lower' if reported[metric] == 'min' else 'higher'} is better), got {mode!r}",
        )

    sections = {}
    for key, cls in (
        ("search", SearchConfig),
        ("scheduler", SchedulerConfig),
        ("resources", Resources),
        ("tracking", TrackingConfig),
        ("seeds", SeedsConfig),
        ("report", ReportConfig),
    ):
        try:
            sections[key] = build(cls, data.get(key), f"{key}.")
        except ConfigError as e:
            err(e.key, e.expected)

    evaluation = _parse_eval(data.get("eval"), Path(file).resolve().parent, err)
    variants = parse_variants(data.get("variants"), base_raw, err)
    space = _parse_space(data.get("space") or {}, base, base_raw, variants, err)
    baseline = _parse_baseline(data.get("baseline"), space, err)
    if sections["scheduler"].kind == "asha":
        for p in ("train.steps", "train.eval_every"):
            if p in space:
                err(
                    f"space.{p}",
                    "not swept with scheduler asha (its rungs count evaluations, "
                    "which must mean the same step in every trial)",
                )
    try:
        translate(space, sections["search"])
    except ConfigError as e:
        err(f"space.{e.key}", e.expected)
    _check_batch_split(sections["resources"].workers, base, space, variants, err)
    if sections["seeds"].adaptive is not None:
        space = _adaptive_space(sections, space, data, err)

    concurrent = data.get("max_concurrent", 1)
    if not isinstance(concurrent, int) or isinstance(concurrent, bool) or concurrent < 1:
        err("max_concurrent", f"a positive integer, got {concurrent!r}")
    failures = data.get("max_failures", DEFAULT_MAX_FAILURES)
    if not isinstance(failures, int) or isinstance(failures, bool) or failures < 0:
        err("max_failures", f"a non-negative integer (retries per trial), got {failures!r}")
    grace = data.get("preempt_grace_s", DEFAULT_PREEMPT_GRACE_S)
    if not isinstance(grace, (int, float)) or isinstance(grace, bool) or not 0 <= grace < 3600:
        err("preempt_grace_s", f"seconds in [0, 3600) (0: no checkpoint on a stop signal), "
            f"got {grace!r}")  # fmt: skip
    store = storage or data.get("storage", "./ray_results")
    if not isinstance(store, str) or not store:
        err("storage", "a folder path or a URI")
    if "://" not in store:
        store = str(Path(store).expanduser().resolve())
    uri = tracking_uri or data.get("tracking_uri", DEFAULT_TRACKING_URI)
    if not isinstance(uri, str) or not uri:
        err("tracking_uri", "an MLflow tracking URI such as sqlite:///mlflow.db")
    uri_relative = absolute_uri(uri) != uri and not tracking_uri
    uri = absolute_uri(uri)

    if available is None and not os.environ.get("RAY_ADDRESS"):
        available = local_resources()
    if available is not None:
        try:
            check_resources(sections["resources"], available, "this machine")
        except ConfigError as e:
            err(e.key, e.expected)

    return Spec(
        name=name,
        description=description,
        metric=metric,
        mode=mode,
        base=base,
        base_raw=base_raw,
        space=space,
        search=sections["search"],
        scheduler=sections["scheduler"],
        resources=sections["resources"],
        max_concurrent=concurrent,
        max_failures=failures,
        preempt_grace_s=float(grace),
        tracking=sections["tracking"],
        storage=store,
        tracking_uri=uri,
        tracking_uri_relative=uri_relative,
        plugins=plugins,
        path=str(Path(path).resolve()),
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        lines=err.lines,
        baseline=baseline,
        text=text,
        variants=variants,
        eval=evaluation,
        seeds=sections["seeds"],
        report=sections["report"],
    )


def _adaptive_space(sections: dict, space: dict, data: dict, err: Reporter) -> dict:
    """The space of an adaptive-seeds sweep's first round: its `train.seed` grid cut or grown
    to the first `min` seeds. Adaptive seeds need a grid search over seeds, a baseline to
    compare with and trials that all run to the end."""
    adaptive = sections["seeds"].adaptive
    seeds = space.get(SEED_PATH)
    if not isinstance(seeds, Grid):
        err("seeds.adaptive", f"a space factor {SEED_PATH}: {{grid: [0, 1, 2]}} to add seeds to")
    if any(not isinstance(s, int) or isinstance(s, bool) for s in seeds.values):
        err(f"space.{SEED_PATH}", "integer seeds with seeds.adaptive")
    if len(seeds.values) > adaptive.max:
        err(f"space.{SEED_PATH}", f"at most seeds.adaptive.max ({adaptive.max}) seeds")
    if data.get("baseline") is None:
        err("seeds.adaptive", "a baseline: the configuration every row is compared with")
    if sections["search"].algorithm != "grid":
        err("seeds.adaptive", f"search.algorithm grid, got {sections['search'].algorithm}")
    if sections["scheduler"].kind != "fifo":
        err("seeds.adaptive", "scheduler fifo (a row is decided on its trials' final values)")
    if not any(isinstance(d, Grid) and p != SEED_PATH for p, d in space.items()):
        err("seeds.adaptive", "a grid factor besides train.seed (rows to compare)")
    first = seed_sequence(list(seeds.values), adaptive.min)
    return {**space, SEED_PATH: Grid(tuple(first))}


def _parse_eval(raw, spec_dir: Path, err: Reporter) -> EvalConfig | None:
    """`eval:` -> its config, with include_path folders made absolute against the spec's."""
    if raw is None:
        return None
    try:
        ev = build(EvalConfig, raw, "eval.")
    except ConfigError as e:
        err(e.key, e.expected)
    folders = []
    for i, p in enumerate(ev.include_path):
        folder = (spec_dir / p).expanduser().resolve()
        if not folder.is_dir():
            err(f"eval.include_path[{i}]", f"a folder of lm-eval task YAMLs, got {p!r} "
                f"({folder} is not a folder)")  # fmt: skip
        folders.append(str(folder))
    ev.include_path = folders
    base = (spec_dir / (ev.base_dir or ".")).expanduser().resolve()
    if not base.is_dir():
        err("eval.base_dir", f"a folder, got {ev.base_dir!r} ({base} is not a folder)")
    ev.base_dir = str(base)
    return ev


def _parse_baseline(raw, space: dict[str, Distribution], err: Reporter) -> dict[str, Any]:
    """`baseline:` -> the reference value of every grid factor (default: its first value)."""
    grid = {p: d for p, d in space.items() if isinstance(d, Grid) and p != SEED_PATH}
    if raw is None:
        return {p: d.values[0] for p, d in grid.items()}
    if not isinstance(raw, dict):
        err("baseline", "a mapping of swept factor -> value, e.g. {cms.periods.medium: 4}")
    for p, v in raw.items():
        key = f"baseline.{p}"
        if p not in grid:
            err(key, f"one of the grid factors {', '.join(grid) or '(none)'}")
        if v not in grid[p].values:
            err(key, f"one of the swept values {list(grid[p].values)}, got {v!r}")
    return {p: raw.get(p, d.values[0]) for p, d in grid.items()}


def _smoke(base_raw: dict) -> dict:
    """A CI-sized copy of the base config: few steps, two evaluations of two windows (the
    last one too: scoring a whole held-out split would dominate a smoke run)."""
    train = dict(base_raw.get("train") or {})
    full = train.get("steps", 300)
    steps = min(full, SMOKE_STEPS) if isinstance(full, int) else SMOKE_STEPS
    train.update(steps=steps, eval_every=max(steps // 2, 1), eval_batches=2, checkpoint_every=0)
    train.update(final_eval="sampled")
    out = {**base_raw, "train": train}
    phases = (base_raw.get("data") or {}).get("phases")
    if isinstance(phases, list) and phases and all(isinstance(p, dict) for p in phases):
        # one evaluation per phase, which ends it; the phases' total is the run's length
        each = max(SMOKE_STEPS // len(phases), 1)
        full = sum(p.get("steps") for p in phases if isinstance(p.get("steps"), int)) or full
        out["data"] = {**base_raw["data"], "phases": [{**p, "steps": each} for p in phases]}
        train.update(steps=each * len(phases), eval_every=each)
        steps = each * len(phases)
    optim = base_raw.get("optim")
    if isinstance(optim, dict) and isinstance(full, int) and full > 0:
        # the schedule shrinks with the run, keeping its shape (a bad `steps` is reported
        # by validation as it was before --smoke)
        optim = dict(optim)
        for key in ("warmup_steps", "decay_steps"):
            if isinstance(optim.get(key), int) and optim[key] > 0:
                optim[key] = max(1, optim[key] * steps // full)
        out["optim"] = optim
    return out


def _absolute_data_path(base_raw: dict) -> dict:
    """Trials run in their own folders, so a relative data.path (or a phase's path) is made
    absolute here."""

    def absolute(d):
        if isinstance(d, dict) and isinstance(d.get("path"), str) and d["path"]:
            return {**d, "path": str(Path(d["path"]).expanduser().resolve())}
        return d

    data = base_raw.get("data")
    if not isinstance(data, dict):
        return base_raw
    data = absolute(data)
    if isinstance(data.get("phases"), list):
        data = {**data, "phases": [absolute(p) for p in data["phases"]]}
    return {**base_raw, "data": data}


def swept_values(spec: Spec, config: dict[str, Any]) -> dict[str, Any]:
    """The swept part of a Ray trial config, in the spec's order."""
    return {p: config[p] for p in spec.space if p in config}


def describe(spec: Spec) -> dict[str, Any]:
    """Flat, loggable summary of the spec's top-level settings."""
    keys = ("name", "metric", "mode", "max_concurrent", "max_failures", "preempt_grace_s",
            "storage", "tracking_uri")  # fmt: skip
    out = {k: getattr(spec, k) for k in keys}
    sections = ("search", "scheduler", "resources", "tracking", "report")
    out.update(flatten({k: to_dict(getattr(spec, k)) for k in sections}))
    if spec.seeds.adaptive is not None:
        out.update(flatten({"seeds": to_dict(spec.seeds)}))
    return out
