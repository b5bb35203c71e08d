"""The sweep runner: a validated Spec -> a Ray Tune experiment, every trial logged to MLflow.

Order of work, so that a bad setup fails before anything exists: the spec was validated by
`load_spec`; then the tracking store is checked and the storage folder made writable; then
Ray starts (or connects to $RAY_ADDRESS, whose resources are checked against the spec);
only then is the MLflow parent run created and the trials launched. MLflow writes happen
here in the driver, from Tune callbacks, never in the trial processes.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from models.common import ConfigError
from nlsweep.cluster import start_ray
from nlsweep.config import flatten, to_dict
from nlsweep.experiment import (
    ExperimentError,
    Marker,
    experiment_path,
    write_marker,
)
from nlsweep.preflight import prepare
from nlsweep.report import write_report
from nlsweep.resources import check_resources
from nlsweep.runtime import describe_hardware
from nlsweep.sanity import WARNING_PREFIX
from nlsweep.space import (
    Choice,
    Grid,
    LogUniform,
    RandInt,
    Uniform,
    as_spec,
    short_names,
    trial_label,
)
from nlsweep.spec import VARIANT, Spec, SpecError, describe, swept_values
from nlsweep.summary import print_summary, summarize
from nlsweep.tracking import (
    TAG_BASELINE,
    TAG_COMMIT,
    TAG_DIVERGED,
    TAG_ERROR,
    TAG_HARDWARE,
    TAG_RESUMED,
    TAG_ROLE,
    TAG_SHA,
    TAG_SPACE,
    TAG_SPEC,
    TAG_SPEC_TEXT,
    TAG_STOPPED,
    TAG_TRIAL,
    TAG_VARIANTS,
    Tracker,
    git_commit,
)
from nlsweep.train import DIVERGED
from nlsweep.trainable import WARNINGS, make_trainable

METRIC_PREFIXES = (
    "train", "val", "perf", "model", "cms", "data", "state", "optim", "surprise", "memory",
    "cms_inner", "teach", "eval",
)  # fmt: skip


def to_tune(dist) -> Any:
    """One spec distribution -> the Ray Tune domain that samples it."""
    if isinstance(dist, Grid):
        return tune.grid_search(list(dist.values))
    if isinstance(dist, Choice):
        return tune.choice(list(dist.values))
    if isinstance(dist, Uniform):
        return tune.uniform(dist.lo, dist.hi)
    if isinstance(dist, LogUniform):
        return tune.loguniform(dist.lo, dist.hi)
    if isinstance(dist, RandInt):
        return tune.randint(dist.lo, dist.hi)
    raise TypeError(f"not a distribution: {dist!r}")


def make_search_alg(spec: Spec):
    plan = spec.plan
    if plan.algorithm in ("grid", "random"):
        # Ray ignores TuneConfig.max_concurrent_trials for a generator instance: cap it here.
        return BasicVariantGenerator(random_state=plan.seed, max_concurrent=spec.max_concurrent)
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    # Optuna 5 changed TPE defaults, so every sampler setting that matters is explicit.
    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(
            seed=plan.seed,
            n_startup_trials=min(10, max(1, plan.trials // 3)),
            multivariate=True,
            constant_liar=True,
        ),
        "random": lambda: optuna.samplers.RandomSampler(seed=plan.seed),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=plan.seed),
    }
    return OptunaSearch(sampler=samplers[plan.sampler](), metric=spec.metric, mode=spec.mode)


def make_scheduler(spec: Spec):
    sc = spec.scheduler
    if sc.kind == "fifo":
        return FIFOScheduler()
    evals = math.ceil(spec.base.train.steps / spec.base.train.eval_every)
    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=evals,
        grace_period=min(sc.grace_period, evals),
        reduction_factor=sc.reduction_factor,
    )


class MlflowLogger(tune.Callback):
    """Writes each trial's child run from the driver as Tune reports results.

    After a resume (`known`: the parent's existing child runs by trial id) a trial keeps its
    run: it is reopened, and results at steps it already logged (a trial restarts from its
    newest checkpoint, which may be older than its last report) are not logged twice.
    """

    def __init__(self, tracker: Tracker, spec: Spec, parent_id: str, base_tags: dict, known=None):
        self.tracker = tracker
        self.spec = spec
        self.parent_id = parent_id
        self.base_tags = base_tags
        self.known = dict(known or {})
        self.runs: dict[str, str] = {}
        self.ended: set[str] = set()
        self.diverged: set[str] = set()
        self.steps: dict[str, int] = {}
        self.last_step: dict[str, int] = {}
        for run in self.known.values():
            if run.info.status in ("RUNNING", "KILLED"):  # its trial continues now
                tracker.reopen(run.info.run_id)

    def __reduce__(self):
        # Tune pickles its callbacks into the experiment folder; a restored experiment must
        # call this driver's logger (live MLflow client, this session's state), not a copy.
        return (active_logger, ())

    def on_trial_start(self, iteration, trials, trial, **info):
        tid = trial.trial_id
        if tid in self.runs:
            return  # a retry within this run: same MLflow run, already open
        values = swept_values(self.spec, trial.config)
        cfg = self.spec.trial_config(values)
        self.steps[tid] = cfg.train.steps
        if tid in self.known:
            run = self.known[tid]
            run_id = run.info.run_id
            self.tracker.reopen(run_id)
            self.tracker.untag(run_id, TAG_ERROR)
            resumed = int(run.data.tags.get(TAG_RESUMED, "0")) + 1
            self.tracker.tag(run_id, TAG_RESUMED, str(resumed))
            self.last_step[tid] = self.tracker.last_step(run_id, self.spec.metric)
            self.runs[tid] = run_id
            return
        params = flatten(to_dict(cfg))
        if VARIANT in values:
            params[VARIANT] = values[VARIANT]
        tags = {**self.base_tags, TAG_TRIAL: tid, TAG_ROLE: "trial"}
        self.runs[tid] = self.tracker.start_run(
            trial_label(values), params, tags, parent_id=self.parent_id
        )

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        metrics = {
            k: v
            for k, v in result.items()
            if k.split("/")[0] in METRIC_PREFIXES
            and "/" in k
            and isinstance(v, (int, float))
            and not isinstance(v, bool)
        }
        step = int(result["step"])
        if DIVERGED in result:
            self.diverged.add(trial.trial_id)
            self.tracker.tag(run_id, TAG_DIVERGED, result[DIVERGED])
            metrics = {}  # its +-inf objective stays out of the metric history
        elif step <= self.last_step.get(trial.trial_id, 0):
            return  # logged before this trial restarted from an older checkpoint
        self.tracker.log(run_id, metrics, step=step)
        for name, why in json.loads(result.get(WARNINGS) or "{}").items():
            self.tracker.tag(run_id, f"{WARNING_PREFIX}.{name}", why)
        if trial.trial_id not in self.last_step and "hardware" in result:
            self.tracker.tag(run_id, TAG_HARDWARE, result["hardware"])
        self.last_step[trial.trial_id] = step

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        if trial.trial_id in self.diverged:
            self._end(trial.trial_id, "FAILED")
            return
        if self.last_step.get(trial.trial_id, 0) < self.steps[trial.trial_id]:
            self.tracker.tag(run_id, TAG_STOPPED, self.spec.scheduler.kind)
        self._end(trial.trial_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        self.tracker.tag(run_id, TAG_ERROR, _last_error_line(trial))
        self._end(trial.trial_id, "FAILED")

    def _end(self, trial_id: str, status: str) -> None:
        self.tracker.end(self.runs[trial_id], status)
        self.ended.add(trial_id)

    def close_open(self) -> int:
        """Mark runs of trials that never completed (the sweep was stopped) as KILLED."""
        open_ids = [t for t in self.runs if t not in self.ended]
        for t in open_ids:
            self._end(t, "KILLED")
        return len(open_ids)


_ACTIVE: list[MlflowLogger] = []


def active_logger() -> MlflowLogger:
    """The logger of the sweep this driver is running (what a pickled logger stands for)."""
    if not _ACTIVE:
        raise RuntimeError("no nlsweep sweep is running in this process")
    return _ACTIVE[-1]


def _last_error_line(trial) -> str:
    try:
        lines = [ln for ln in Path(trial.error_file).read_text().splitlines() if ln.strip()]
        return lines[-1] if lines else "unknown error"
    except (OSError, TypeError):
        return "unknown error"


def run_sweep(
    spec: Spec,
    out=print,
    report_dir: Path | None = Path("reports"),
    resume: bool = False,
    restart: bool = False,
    resume_command: str = "",
) -> int:
    """Run (or resume) the whole sweep and write its report; the exit code: 0 every trial
    finished, 1 some failed, 130 interrupted (the message says how to resume)."""
    tracker = Tracker(spec.tracking_uri)
    tracker.check()
    marker = prepare(spec, resume, restart, trial_counts, out)
    path = experiment_path(spec.storage, spec.name)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the compact CLIReporter table below
    started, available, where = start_ray()
    try:
        try:
            check_resources(spec.resources, available, where)
        except ConfigError as e:
            raise SpecError.at(spec, e.key, e.expected) from None
        if marker is None:
            parent_id, base_tags = open_sweep_run(tracker, spec)
            write_marker(path, Marker(parent_id, spec.tracking_uri, spec.fingerprint, spec.path))
            logger = MlflowLogger(tracker, spec, parent_id, base_tags)
        else:
            parent_id = marker.parent_run_id
            if not tracker.has_run(parent_id):
                raise ExperimentError(
                    f"{path}: its MLflow parent run {parent_id} is not in {spec.tracking_uri}; "
                    "use --restart to archive the experiment and start over"
                )
            tracker.experiment(spec.name)
            tracker.reopen(parent_id)
            tracker.tag(
                parent_id, TAG_RESUMED, str(int(tracker.tags(parent_id).get(TAG_RESUMED, 0)) + 1)
            )
            base_tags = sweep_tags(spec)
            known = tracker.children(parent_id)
            logger = MlflowLogger(tracker, spec, parent_id, base_tags, known)
            done = sum(r.info.status == "FINISHED" for r in known.values())
            out(f"resuming {path} ({done} of its {len(known)} trial runs had finished)")
        _ACTIVE.append(logger)
        try:
            tuner = make_tuner(spec, logger) if marker is None else restore_tuner(spec, path)
            results = tuner.fit()
        except BaseException as e:
            logger.close_open()
            tracker.end(parent_id, "KILLED")
            if isinstance(e, KeyboardInterrupt):
                out(f"interrupted; resume with: {resume_command}")
            raise
        finally:
            _ACTIVE.remove(logger)
        killed = logger.close_open()
        unfinished = len(results) - results.num_terminated - results.num_errors
        if unfinished or len(results) < spec.plan.trials:
            tracker.end(parent_id, "KILLED")
            done = results.num_terminated + results.num_errors
            out(
                f"interrupted: {done} of {spec.plan.trials} trials ended; checkpoints and "
                f"the experiment state are in {path}\nresume with: {resume_command}"
            )
            return 130
        rows, best, failed = summarize(spec, results)
        tracker.end(parent_id, "KILLED" if killed else "FINISHED" if not failed else "FAILED")
        print_summary(spec, rows, best, failed, parent_id, out)
        if report_dir is not None:
            path = write_report(
                spec.tracking_uri, spec.name, report_dir / f"{spec.name}.md", parent_id
            )
            out(f"report: {path}")
        return 0 if not failed else 1
    finally:
        if started:
            ray.shutdown()


def trial_counts(spec: Spec, path: str) -> tuple[int, int]:
    """(finished, planned) trials of the experiment at `path`, as Ray recorded them."""
    from ray.tune import ExperimentAnalysis

    try:
        trials = ExperimentAnalysis(path).trials
    except Exception:  # noqa: BLE001 - no experiment state saved yet
        trials = []
    finished = sum(t.status == "TERMINATED" for t in trials)
    return finished, max(spec.plan.trials, len(trials))


def restore_tuner(spec: Spec, path: str) -> tune.Tuner:
    """The interrupted experiment at `path`, its unfinished and errored trials to continue
    from their newest checkpoints; the search algorithm and scheduler resume their state."""
    return tune.Tuner.restore(
        path, make_trainable(spec), resume_unfinished=True, resume_errored=True
    )


def make_tuner(spec: Spec, logger: MlflowLogger) -> tune.Tuner:
    """The Ray Tune experiment: trainable, space, search, scheduler, reporter, MLflow callback."""
    names = short_names(list(spec.space))
    reporter = tune.CLIReporter(
        parameter_columns={p: names[p] for p in spec.space},
        metric_columns={"step": "step", spec.metric: spec.metric},
        max_report_frequency=10,
        sort_by_metric=False,
    )
    return tune.Tuner(
        make_trainable(spec),
        param_space={p: to_tune(d) for p, d in spec.space.items()},
        tune_config=tune.TuneConfig(
            metric=spec.metric,
            mode=spec.mode,
            search_alg=make_search_alg(spec),
            scheduler=make_scheduler(spec),
            num_samples=spec.plan.num_samples,
            max_concurrent_trials=spec.max_concurrent if spec.plan.algorithm == "optuna" else None,
            # A trial's process is reused for the next one (saves the torch import and start-up,
            # seconds a trial); every trial seeds its RNGs and sets its threads itself.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=spec.name,
            storage_path=spec.storage,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            callbacks=[logger],
            progress_reporter=reporter,
            verbose=1,
        ),
    )


def sweep_tags(spec: Spec) -> dict[str, str]:
    """Tags every run of the sweep carries: spec file, its hash, the code's commit."""
    tags = {TAG_SPEC: spec.path, TAG_SHA: spec.sha256}
    commit = git_commit()
    if commit:
        tags[TAG_COMMIT] = commit
    return tags


def open_sweep_run(tracker: Tracker, spec: Spec) -> tuple[str, dict[str, str]]:
    """The sweep's parent run (spec settings and base config as params); its shared tags."""
    tracker.experiment(spec.name)
    base_tags = sweep_tags(spec)
    params = {**describe(spec), **{f"base.{k}": v for k, v in flatten(to_dict(spec.base)).items()}}
    tags = {
        **base_tags,
        TAG_ROLE: "sweep",
        "mlflow.note.content": spec.description,
        TAG_SPEC_TEXT: spec.text,
        TAG_SPACE: json.dumps({p: as_spec(d) for p, d in spec.space.items()}),
        TAG_BASELINE: json.dumps(spec.baseline),
        TAG_VARIANTS: json.dumps(spec.variants),
        TAG_HARDWARE: describe_hardware(torch.device("cpu")),
    }
    return tracker.start_run(spec.name, params, tags), base_tags
