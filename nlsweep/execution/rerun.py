"""`nlsweep rerun SPEC_OR_NAME ROW_OR_RUN_ID`: repeat a trial on the record, and say whether it
reproduced.

The trial's exact config is the one its MLflow run recorded (`config.json`, the resolved config
with every `--set` and `--smoke` of the sweep applied), not the spec file as it is now: the spec
is loaded (the file given, else the file the sweep ran, else the copy in the parent run's
artifacts) and every field where its trial config differs from the recorded one becomes an
override, after which the two must be equal or nothing runs. The repeat goes through the
sweep's own machinery, Ray Tune and the run logger, as a new child run of the sweep's parent
run tagged `nlsweep.rerun_of` (reports keep such runs out of their pools), in a Tune experiment
of its own (`NAME-reruns`) beside the sweep's. It stops where the repeated run stopped (a trial
a scheduler ended early is compared at that step). Reproduced means every held-out metric the
repeated run ended with (`val/*`) is bit-identical; otherwise each difference is printed, with
whatever differs between the two runs' hardware, library versions and project commit.

ROW_OR_RUN_ID: a row of the report's main table (`R3`: every seed of that configuration), or a
run id (or a unique prefix of 8 or more characters).
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path

import ray
from ray import tune

from nlsweep.config.builder import flatten, to_dict
from nlsweep.execution import sweep as runner
from nlsweep.execution.callbacks import MlflowCallback
from nlsweep.execution.experiment import experiment_path
from nlsweep.execution.lock import ExperimentLock
from nlsweep.execution.preflight import check_storage, prepare_data
from nlsweep.execution.runlog import RunLogger, close_open_runs, repeat_key, sweep_tags
from nlsweep.spec import Spec, load_spec, swept_values
from nlsweep.tracking.read import RunData, SweepData, read_sweep
from nlsweep.tracking.store import Tracker
from nlsweep.tracking.tags import (
    TAG_COMMIT,
    TAG_HARDWARE,
    TAG_PLUGINS,
    TAG_RERUN_OF,
    TAG_SHA,
    TAG_SPEC,
    TAG_SPEC_SHOWN,
    TAG_VERSIONS,
)

ROW_RE = re.compile(r"^R([1-9][0-9]*)$")


class RerunError(RuntimeError):
    """What cannot be re-run, in one line (exit 2)."""


def targets(sweep: SweepData, which: str) -> list[RunData]:
    """The runs `which` names: a report row (grid sweeps) or one run id or prefix."""
    m = ROW_RE.match(which)
    if m:
        from nlsweep.report.results import build_rows, read_context, read_trial

        ctx = read_context(sweep)
        if ctx.algorithm != "grid":
            raise RerunError(
                f"{which}: rows belong to grid sweeps; {sweep.experiment} used "
                f"{ctx.algorithm} search: name a run id"
            )
        rows = build_rows([read_trial(r, ctx) for r in sweep.trials], ctx)
        k = int(m.group(1))
        if k > len(rows):
            raise RerunError(
                f"{which}: the report of {sweep.experiment} has rows R1 to R{len(rows)}"
            )
        return [t.run for t in rows[k - 1].trials]
    if not re.fullmatch(r"[0-9a-fA-F]{8,32}", which):
        raise RerunError(f"{which}: a report row (R1, R2, ...) or a run id (8 to 32 hex digits)")
    found = [r for r in sweep.trials if r.run_id.startswith(which.lower())]
    if len(found) != 1:
        many = "several trial runs" if found else "no trial run"
        raise RerunError(f"{which}: {many} of sweep {sweep.parent.run_id[:8]} ({sweep.experiment})")
    return found


def _spec_file(spec_arg: str | None, sweep: SweepData, tracker: Tracker, tmp: Path) -> str:
    if spec_arg is not None:
        return spec_arg
    recorded = sweep.parent.tags.get(TAG_SPEC, "")
    if recorded and Path(recorded).is_file():
        return recorded
    copies = tracker.artifacts(sweep.parent.run_id, "spec")
    if not copies:
        raise RerunError(f"{sweep.experiment}: the sweep's spec file {recorded!r} is gone and "
                         "its parent run holds no copy; pass the spec file")  # fmt: skip
    return tracker.download(sweep.parent.run_id, copies[0], tmp)


def exact_spec(path: str, uri: str, recorded: list[dict], storage: str | None = None) -> Spec:
    """The spec at `path`, with overrides that make each recorded trial's config come out
    exactly as recorded; RerunError naming the first field that cannot."""
    spec = load_spec(path, tracking_uri=uri, storage=storage)
    sets: dict[str, object] = {}
    for rec in recorded:
        want = flatten(rec["config"])
        have = flatten(to_dict(spec.trial_config(rec["swept"])))
        for k in sorted(set(want) | set(have)):
            if want.get(k) != have.get(k) and k not in rec["swept"]:
                if k in sets and sets[k] != want.get(k):
                    raise RerunError(f"base.{k}: the trials to re-run recorded different values")
                sets[k] = want.get(k)
    if sets:
        spec = load_spec(
            path,
            overrides=[f"base.{k}={json.dumps(v)}" for k, v in sets.items()],
            tracking_uri=uri,
            storage=storage,
        )
    for rec in recorded:
        have = flatten(to_dict(spec.trial_config(rec["swept"])))
        bad = [k for k, v in flatten(rec["config"]).items() if have.get(k) != v]
        if bad:
            raise RerunError(f"{path}: base.{bad[0]}: cannot rebuild the recorded value "
                             f"{flatten(rec['config'])[bad[0]]!r}")  # fmt: skip
    return spec


def same_plugins(tags: dict[str, str], spec: Spec) -> None:
    """The plugins' code is the code the sweep ran, or a RerunError naming the first that
    changed (a re-run of other code reproduces nothing)."""
    try:
        then = {p["name"]: p["digest"] for p in json.loads(tags.get(TAG_PLUGINS, "[]"))}
    except (ValueError, KeyError, TypeError):
        raise RerunError(
            f"{spec.path}: plugins: the sweep's record of them is unreadable"
        ) from None
    now = {p.name: p.digest for p in spec.plugins}
    for name in sorted(set(then) | set(now)):
        if then.get(name) != now.get(name):
            was = (then.get(name) or "absent")[:12]
            raise RerunError(f"{spec.path}: plugins: {name}'s code changed since the sweep began "
                             f"(sha256 {was}, now {(now.get(name) or 'absent')[:12]})")  # fmt: skip


def verdict(old: RunData, new: RunData) -> tuple[bool, list[str]]:
    """Whether `new` reproduced `old` (identical final held-out metrics), and the lines that
    say so or list each difference and what differed in where and how they ran."""
    keys = sorted(k for k in old.metrics if k.startswith("val/"))
    lines, same = [], new.status == "FINISHED"
    if not same:
        lines.append(f"the re-run ended {new.status}")
    diffs = []
    for k in keys:
        a, b = old.metrics[k], new.metrics.get(k)
        if b is None or a != b:
            diffs.append(k)
            b_s = "missing" if b is None else f"{b:.10g} ({b - a:+.3g})"
            lines.append(f"{k}: {a:.10g} -> {b_s}")
    same = same and not diffs and bool(keys)
    if same:
        lines.insert(0, f"reproduced: {len(keys)} final held-out metrics identical")
    for tag, what in ((TAG_HARDWARE, "hardware"), (TAG_VERSIONS, "versions"),
                      (TAG_COMMIT, "commit")):  # fmt: skip
        a, b = old.tags.get(tag, "not recorded"), new.tags.get(tag, "not recorded")
        if a != b:
            lines.append(f"{what}: was {a}; now {b}")
    return same, lines


class StopAt(tune.Stopper):
    """Stops each trial at the step its swept values map to (`nlsweep rerun`: where the run
    it repeats stopped, so a trial a scheduler stopped early is compared at that step)."""

    def __init__(self, spec: Spec, steps: dict[str, int]):
        self.spec, self.steps = spec, steps

    def __call__(self, trial_id, result) -> bool:
        values = swept_values(self.spec, result.get("config", {}))
        return int(result.get("step", 0)) >= self.steps.get(repeat_key(values), 1 << 62)

    def stop_all(self) -> bool:
        return False


def run_repeats(
    spec: Spec,
    tracker: Tracker,
    parent_id: str,
    tags: dict,
    repeats: dict[str, str],
    stops: dict,
    out=print,
) -> dict[str, str]:
    """`nlsweep rerun`: the trials whose swept values key `repeats` (-> the run each repeats),
    as new child runs of `parent_id` in a Tune experiment of their own, each stopped at its
    step in `stops`; returns repeated run id -> new run id."""
    prepare_data(spec)
    check_storage(spec)
    lock = ExperimentLock(spec.storage, spec.name).acquire()  # never beside the sweep itself
    cluster = None
    try:
        cluster = runner.start_checked_ray(spec)
        name = f"{spec.name}-reruns"
        path = experiment_path(spec.storage, name)
        logger = RunLogger(spec, parent_id, {**sweep_tags(spec), **tags}, path, repeats)
        points = [json.loads(k) for k in repeats]
        out(f"re-running {len(points)} trial(s) of {spec.name} in {path}")
        began = time.time() * 1000
        tune_run = runner.make_tuner(
            spec, MlflowCallback(logger), None, points, name=name, stop=StopAt(spec, stops)
        )
        tune_run.fit()
        close_open_runs(tracker, parent_id)
    finally:
        if cluster is not None and cluster.started_here:
            ray.shutdown()
        lock.release()
    newest: dict[str, tuple[int, str]] = {}
    for r in tracker.children(parent_id).values():
        old = r.data.tags.get(TAG_RERUN_OF)
        if old in repeats.values() and r.info.start_time >= began - 1000:
            newest[old] = max(newest.get(old, (0, "")), (r.info.start_time, r.info.run_id))
    return {old: run_id for old, (_, run_id) in newest.items()}


def rerun(
    spec_arg: str | None, name: str, uri: str, which: str, out=print, storage: str | None = None
) -> int:
    """Re-run the trial(s) `which` of the newest sweep of `name`; 0 when every one reproduced,
    1 when one did not (the differences printed), 2 (RerunError, SpecError, ...) when nothing
    could run."""
    sweep = read_sweep(uri, name)
    runs = targets(sweep, which)
    tracker = Tracker(uri)
    with tempfile.TemporaryDirectory() as tmp:
        recorded = []
        for r in runs:
            try:
                got = tracker.download(r.run_id, "config.json", tmp)
                recorded.append(json.loads(Path(got).read_text()))
            except Exception as e:  # noqa: BLE001 - missing or unreadable: either way one line
                raise RerunError(
                    f"run {r.run_id[:8]} ({r.name}): no readable config.json artifact, so its "
                    f"exact config is unknown ({type(e).__name__})"
                ) from None
        spec = exact_spec(_spec_file(spec_arg, sweep, tracker, Path(tmp)), uri, recorded, storage)
    if spec.name != name:
        raise RerunError(f"{spec.path}: name: {name} (the sweep's), got {spec.name}")
    same_plugins(sweep.parent.tags, spec)
    repeats = {repeat_key(rec["swept"]): r.run_id for r, rec in zip(runs, recorded)}
    stops = {
        repeat_key(rec["swept"]): max((s for s, _ in r.history.get(spec.metric, [])), default=0)
        or rec["config"]["train"]["steps"]
        for r, rec in zip(runs, recorded)
    }
    tags = {k: sweep.parent.tags[k] for k in (TAG_SPEC, TAG_SPEC_SHOWN, TAG_SHA)
            if k in sweep.parent.tags}  # fmt: skip
    new_ids = run_repeats(spec, tracker, sweep.parent.run_id, tags, repeats, stops, out)
    again = {r.run_id: r for r in read_sweep(uri, name, sweep.parent.run_id).reruns}
    ok = True
    for old in runs:
        new = again.get(new_ids.get(old.run_id, ""))
        head = f"rerun of {old.run_id[:8]} ({old.name})"
        if new is None:
            out(f"{head}: no re-run recorded")
            ok = False
            continue
        same, lines = verdict(old, new)
        ok &= same
        out(f"{head} -> run {new.run_id[:8]}: " + ("; ".join(lines) or "no held-out metric"))
    return 0 if ok else 1
