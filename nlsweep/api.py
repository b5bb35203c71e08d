"""nlsweep's Python API, for notebooks and scripts: the same steps as the command line.

    spec = nlsweep.load_spec("search_spaces/quickstart.yaml", overrides=["base.train.steps=40"])
    result = nlsweep.run_sweep(spec)          # Ray Tune + MLflow, then the report
    result.trials                             # pandas: one row per trial
    nlsweep.load_trials("quickstart", tracking_uri="sqlite:///mlflow.db")  # on any machine
    nlsweep.write_report("quickstart", tracking_uri=...)
    nlsweep.evaluate_sweep("quickstart", tasks=["piqa"])   # lm-eval tasks on finished trials
    nlsweep.Trainer(spec.base)                # one trial, no Ray

Errors are exceptions here (`SpecError`, `TrackingError`, ...), each with the one-line message
the command line prints; the command line is a thin layer over these functions.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from models.errors import ConfigError
from nlsweep.report.results import trial_table
from nlsweep.report.writer import write_report as _write_report
from nlsweep.spec import NAME_RE, Spec
from nlsweep.spec import load_spec as _load_spec
from nlsweep.tracking.config import DEFAULT_TRACKING_URI, absolute_uri, bound_http_calls
from nlsweep.tracking.read import read_sweep

__all__ = [
    "NotASpecOrName", "SweepResult", "evaluate_sweep", "load_spec", "load_trials", "locate",
    "run_sweep", "write_report",
]  # fmt: skip

EVERYWHERE = {"CPU": float("inf"), "GPU": float("inf")}
"""Resources for reading a spec only: what this machine has is a runner's business."""


def load_spec(
    path: str | os.PathLike,
    overrides: list[str] | tuple = (),
    *,
    smoke: bool = False,
    tracking_uri: str | None = None,
    storage: str | None = None,
) -> Spec:
    """Parse and validate a spec file, with `--set`-style overrides (`"base.train.steps=40"`);
    raises `SpecError` (its message: `FILE:LINE: key: expected`)."""
    return _load_spec(
        path, overrides=list(overrides), smoke=smoke, tracking_uri=tracking_uri, storage=storage
    )


class NotASpecOrName(ValueError):
    """What names a sweep is neither an existing spec file nor a valid experiment name."""


def locate(name_or_spec, tracking_uri: str | None = None) -> tuple[str | None, str, str]:
    """(spec file or None, experiment name, absolute tracking URI) of a `Spec`, a spec file or
    an experiment name; an explicit `tracking_uri` wins over the spec's."""
    if isinstance(name_or_spec, Spec):
        return (
            name_or_spec.path,
            name_or_spec.name,
            absolute_uri(tracking_uri or name_or_spec.tracking_uri),
        )
    text = str(name_or_spec)
    if Path(text).is_file():
        spec = _load_spec(text, available=EVERYWHERE)
        return text, spec.name, absolute_uri(tracking_uri or spec.tracking_uri)
    if not NAME_RE.match(text):
        raise NotASpecOrName(
            f"{text}: neither a spec file nor an experiment name (letters, digits, _ and -: "
            "the name becomes reports/NAME.md)"
        )
    return None, text, absolute_uri(tracking_uri or DEFAULT_TRACKING_URI)


def load_trials(
    name_or_spec, tracking_uri: str | None = None, run_id: str | None = None
) -> pd.DataFrame:
    """Every trial of the newest sweep of `name_or_spec` (or of parent run `run_id`), read from
    the tracking store: one row per trial with its swept values, seed, status, the objective's
    final and best, run id, and the final value of each metric it logged."""
    _, name, uri = locate(name_or_spec, tracking_uri)
    bound_http_calls()
    return trial_table(read_sweep(uri, name, run_id))


def write_report(
    name_or_spec,
    out: str | os.PathLike | None = None,
    *,
    tracking_uri: str | None = None,
    run_id: str | None = None,
) -> Path:
    """Write the ablation report of a sweep from the tracking store (default
    `reports/NAME.md`, with its figures and CSV beside it); returns the markdown's path."""
    _, name, uri = locate(name_or_spec, tracking_uri)
    bound_http_calls()
    return _write_report(uri, name, Path(out or f"reports/{name}.md"), run_id)


def evaluate_sweep(
    name_or_spec,
    tasks: list[str] | None = None,
    *,
    tracking_uri: str | None = None,
    device: str = "cpu",
    report_dir: str | os.PathLike | None = "reports",
    out=print,
    **settings,
) -> int:
    """Run lm-eval tasks on every finished trial of the newest sweep of `name_or_spec`, logging
    `eval/<task>/<metric>` on each trial's run, as `nlsweep eval` does; then write the report
    (into `report_dir`; None: none). The tasks and their settings are the spec's `eval:`
    section, with `tasks` and `settings` (any `EvalConfig` field: limit, num_fewshot,
    include_path, batch_size, context, max_length, seed) in its place. What a run was already
    evaluated on with the same settings is skipped. Returns how many runs were evaluated;
    raises `EvalSetupError`, `TaskError`, `LoadError`, `SpecError` or `TrackingError`."""
    from nlsweep.evaluation import EvalConfig, evaluate_runs
    from nlsweep.tracking.store import Tracker

    spec_file, name, uri = locate(name_or_spec, tracking_uri)
    base = _load_spec(spec_file, available=EVERYWHERE).eval if spec_file else None
    if base is None and not tasks:
        raise EvalSetupError(f"{name_or_spec}: no eval: section in its spec, and no tasks named "
                             "(--tasks)")  # fmt: skip
    fields = {**(_fields(base) if base else {}), **({"tasks": list(tasks)} if tasks else {})}
    for key, value in settings.items():
        if value is not None:
            fields[key] = value
    if "include_path" in settings and settings["include_path"] is not None:
        fields["include_path"] = [str(Path(p).resolve()) for p in settings["include_path"]]
        fields["base_dir"] = os.getcwd()  # paths given here are from here
    if not fields.get("base_dir"):
        fields["base_dir"] = os.getcwd()  # a task YAML's relative paths: from here
    try:
        ev = EvalConfig(**fields)
    except TypeError as e:
        raise EvalSetupError(f"eval settings: {e}") from None
    except ConfigError as e:
        raise EvalSetupError(f"eval.{e.key}: {e.expected}") from None
    bound_http_calls()
    sweep = read_sweep(uri, name)
    finished = [r for r in sweep.trials if r.status == "FINISHED"]
    metric = sweep.parent.params.get("metric", "val/bpc")
    out(f"evaluating {len(finished)} finished trial runs of {name} on {', '.join(ev.parts)}")
    done = evaluate_runs(Tracker(uri), finished, ev, metric, spec_file, device, out)
    if report_dir is not None:
        out(f"report: {_write_report(uri, name, Path(report_dir) / f'{name}.md')}")
    return done


def _fields(config) -> dict:
    """A dataclass's fields, one level deep (nested configs stay objects)."""
    import dataclasses

    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


class EvalSetupError(ValueError):
    """What `evaluate_sweep` cannot start with, in one line."""


@dataclass
class SweepResult:
    """What `run_sweep` ran: its exit code (as the command line's: 0 every trial finished,
    1 some failed, 3 the tracking store stayed away, 130/143/129 a stop signal), the report
    it wrote (None when asked for none), and the trials as `load_trials` reads them."""

    name: str
    exit_code: int
    report: Path | None
    trials: pd.DataFrame

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def prefer_loopback() -> None:
    """Make the Ray a local sweep starts listen on 127.0.0.1 only (GCS, raylet, object
    manager, workers, agents), through Ray's single-machine mode, whose node address is the
    loopback one. Ray reads the switch when it is imported, so this runs before; a cluster
    at $RAY_ADDRESS is left as it is."""
    if not os.environ.get("RAY_ADDRESS") and "ray" not in sys.modules:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def run_sweep(
    spec: Spec | str | os.PathLike,
    *,
    resume: bool = False,
    restart: bool = False,
    extend: bool = False,
    report_dir: str | os.PathLike | None = "reports",
    out=print,
) -> SweepResult:
    """Run a sweep (a `Spec` or a spec file) through Ray Tune and MLflow, as `nlsweep run`
    does, write its report into `report_dir` (None: none), and return its trials. Refusals
    before anything starts raise (`SpecError`, `TrackingError`, `ExperimentError`,
    `ClusterError`), each with its one-line message."""
    if not isinstance(spec, Spec):
        spec = load_spec(spec)
    prefer_loopback()  # before Ray is imported
    from nlsweep.execution.sweep import run_sweep as execute

    folder = None if report_dir is None else Path(report_dir)
    again = shlex.join(["nlsweep", "run", str(Path(spec.path).resolve()), "--resume"])
    code = execute(
        spec,
        out=out,
        report_dir=folder,
        resume=resume,
        restart=restart,
        extend=extend,
        resume_command=again,
    )
    trials = load_trials(spec)
    report = None if folder is None else folder / f"{spec.name}.md"
    return SweepResult(spec.name, code, report if report and report.exists() else None, trials)
