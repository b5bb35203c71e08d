"""The sweep runner: a validated Spec -> a Ray Tune experiment, every trial logged to MLflow.

Order of work, so that a bad setup fails before anything exists: the spec was validated by
`load_spec`; then the tracking store is checked and the storage folder made writable; then
Ray starts (or connects to $RAY_ADDRESS, whose resources are checked against the spec);
only then is the MLflow parent run created and the trials launched. MLflow writes happen
here in the driver, from Tune callbacks, never in the trial processes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from models.common import ConfigError
from nlsweep.config import flatten, to_dict
from nlsweep.data import DataError, cached_overlap, load_texts, resolve_files
from nlsweep.report import write_report
from nlsweep.resources import check_resources, local_resources
from nlsweep.space import (
    Choice,
    Grid,
    LogUniform,
    RandInt,
    Uniform,
    as_spec,
    grid_points,
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
from nlsweep.train import DIVERGED, describe_hardware
from nlsweep.trainable import make_trainable

METRIC_PREFIXES = ("train", "val", "perf", "model", "cms", "data", "state", "optim", "surprise")


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
    """Writes each trial's child run from the driver as Tune reports results."""

    def __init__(self, tracker: Tracker, spec: Spec, parent_id: str, base_tags: dict):
        self.tracker = tracker
        self.spec = spec
        self.parent_id = parent_id
        self.base_tags = base_tags
        self.runs: dict[str, str] = {}
        self.ended: set[str] = set()
        self.diverged: set[str] = set()
        self.steps: dict[str, int] = {}
        self.last_step: dict[str, int] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        if trial.trial_id in self.runs:
            return
        values = swept_values(self.spec, trial.config)
        cfg = self.spec.trial_config(values)
        self.steps[trial.trial_id] = cfg.train.steps
        params = flatten(to_dict(cfg))
        if VARIANT in values:
            params[VARIANT] = values[VARIANT]
        tags = {**self.base_tags, TAG_TRIAL: trial.trial_id, TAG_ROLE: "trial"}
        self.runs[trial.trial_id] = self.tracker.start_run(
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
        if DIVERGED in result:
            self.diverged.add(trial.trial_id)
            self.tracker.tag(run_id, TAG_DIVERGED, result[DIVERGED])
            metrics = {}  # its +-inf objective stays out of the metric history
        self.tracker.log(run_id, metrics, step=int(result["step"]))
        if trial.trial_id not in self.last_step and "hardware" in result:
            self.tracker.tag(run_id, TAG_HARDWARE, result["hardware"])
        self.last_step[trial.trial_id] = int(result["step"])

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


def _last_error_line(trial) -> str:
    try:
        lines = [ln for ln in Path(trial.error_file).read_text().splitlines() if ln.strip()]
        return lines[-1] if lines else "unknown error"
    except (OSError, TypeError):
        return "unknown error"


def _check_storage(spec: Spec) -> None:
    if "://" in spec.storage:
        return
    try:
        Path(spec.storage).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=spec.storage):
            pass
    except OSError as e:
        raise SpecError.at(
            spec, "storage", f"a writable folder; {spec.storage}: {e.strerror or e}"
        ) from None


def prepare_data(spec: Spec) -> None:
    """Find (or download) every corpus the trials will read, before any trial starts."""
    configs = [spec.base]
    if spec.plan.algorithm == "grid":
        configs += [spec.trial_config(pt) for pt in grid_points(spec.plan.params)]
    seen = set()
    for cfg in configs:
        key = (cfg.data.corpus, cfg.data.path)
        if key not in seen:
            seen.add(key)
            try:
                resolve_files(cfg.data)
                cached_overlap(*load_texts(cfg.data))  # computed once here, not per trial
            except DataError as e:
                raise SpecError.at(spec, "base.data", str(e)) from None


def _start_ray() -> tuple[bool, dict[str, float], str]:
    """Start a local Ray (or join $RAY_ADDRESS); returns (started_here, resources, where)."""
    address = os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return False, ray.cluster_resources(), "the running Ray instance"
    if address:
        import models
        import nlsweep

        env = {k: os.environ[k] for k in ("NLSWEEP_DATA",) if k in os.environ}
        ray.init(
            address=address,
            logging_level=logging.WARNING,
            runtime_env={"py_modules": [nlsweep, models], "env_vars": env},
        )
        return True, ray.cluster_resources(), f"the Ray cluster at {address}"
    local = local_resources()
    # Workers must run the code the driver validated: an installed copy elsewhere on the
    # path (another checkout's editable install, say) would otherwise win in the workers.
    root = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH", "")) if p
    )  # a local Ray inherits the driver's environment; a runtime_env would cost ~10 s
    ray.init(
        num_cpus=int(local["CPU"]),
        num_gpus=int(local["GPU"]),
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=True,
    )
    return True, ray.cluster_resources(), "this machine"


def run_sweep(spec: Spec, out=print, report_dir: Path | None = Path("reports")) -> int:
    """Run the whole sweep and write its report; the exit code (0: every trial finished)."""
    tracker = Tracker(spec.tracking_uri)
    tracker.check()
    _check_storage(spec)
    prepare_data(spec)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the compact CLIReporter table below
    started, available, where = _start_ray()
    try:
        try:
            check_resources(spec.resources, available, where)
        except ConfigError as e:
            raise SpecError.at(spec, e.key, e.expected) from None
        parent_id, base_tags = open_sweep_run(tracker, spec)
        logger = MlflowLogger(tracker, spec, parent_id, base_tags)
        tuner = make_tuner(spec, logger)
        try:
            results = tuner.fit()
        except BaseException:
            logger.close_open()
            tracker.end(parent_id, "KILLED")
            raise
        killed = logger.close_open()
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
            callbacks=[logger],
            progress_reporter=reporter,
            verbose=1,
        ),
    )


def open_sweep_run(tracker: Tracker, spec: Spec) -> tuple[str, dict[str, str]]:
    """The sweep's parent run (spec settings and base config as params); its shared tags."""
    tracker.experiment(spec.name)
    base_tags = {TAG_SPEC: spec.path, TAG_SHA: spec.sha256}
    commit = git_commit()
    if commit:
        base_tags[TAG_COMMIT] = commit
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
