"""The sweep runner: a validated Spec -> a Ray Tune experiment, every trial logged to MLflow.

Order of work, so that a bad setup fails before anything exists: the spec was validated by
`load_spec`; then the tracking store is checked and the storage (folder or URI) takes a
probe write; then Ray starts (or joins $RAY_ADDRESS, whose resources are checked against
the spec, and whose node count decides whether the storage must be shared); only then is
the MLflow parent run created (with the spec file as an artifact) and the trials launched.
MLflow writes happen in the process that runs Tune's callbacks (the driver, or the head
node's actor under Ray Client), never in the trial processes.
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter, SearchGenerator
from ray.tune.search.basic_variant import BasicVariantGenerator

from models.errors import ConfigError
from nlsweep.config.resources import check_resources
from nlsweep.config.space import Choice, Grid, LogUniform, RandInt, Uniform, short_names
from nlsweep.execution import preemption
from nlsweep.execution.callbacks import EtaReporter, MlflowCallback
from nlsweep.execution.cluster import start_ray
from nlsweep.execution.experiment import (
    TUNER_FILE,
    ExperimentError,
    experiment_path,
    new_marker,
    read_bytes,
    restorable,
    write_marker,
)
from nlsweep.execution.interrupts import Interrupts
from nlsweep.execution.lock import ExperimentLock
from nlsweep.execution.preemption import PREEMPTED, Preemption
from nlsweep.execution.preflight import (
    adopt_tracking_uri,
    check_environment,
    check_name_free,
    check_shared_storage,
    check_storage,
    check_store_kept,
    extension,
    prepare,
    prepare_data,
)
from nlsweep.execution.runlog import RunLogger, close_open_runs, open_sweep_run, outage, sweep_tags
from nlsweep.execution.seal import Seal
from nlsweep.execution.stalls import StallWatch
from nlsweep.execution.summary import (
    concurrency,
    print_summary,
    record_forecast,
    record_tokenizers,
    summarize,
    tally,
)
from nlsweep.execution.trainable import make_trainable
from nlsweep.spec import Spec, SpecError
from nlsweep.tracking.config import bound_http_calls
from nlsweep.tracking.store import Tracker
from nlsweep.tracking.tags import TAG_RESUMED


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


def make_search_alg(spec: Spec, seal: Seal | None = None, points: list | None = None):
    plan = spec.plan
    if plan.algorithm in ("grid", "random") or points:
        # Ray ignores TuneConfig.max_concurrent_trials for a generator instance: cap it here.
        alg = SealedVariants(
            random_state=plan.seed, max_concurrent=spec.max_concurrent, points_to_evaluate=points
        )
        alg.seal = seal
        return alg
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
    searcher = OptunaSearch(sampler=samplers[plan.sampler](), metric=spec.metric, mode=spec.mode)
    # Tune's own wrapping, done here so that the state it saves is sealed; the concurrency
    # cap Tune would add for max_concurrent_trials goes in the same place.
    alg = SealedSearch(ConcurrencyLimiter(searcher, max_concurrent=spec.max_concurrent))
    alg.seal = seal
    return alg


def evaluations(spec: Spec) -> int:
    """Results a trial of the base config reports (one per evaluation)."""
    return math.ceil(spec.base.train.steps / spec.base.train.eval_every)


def make_scheduler(spec: Spec):
    sc = spec.scheduler
    if sc.kind == "fifo":
        return FIFOScheduler()
    evals = evaluations(spec)
    # Rungs in steps, not in Tune's iterations: a checkpoint taken on a stop signal is one
    # more report, but no evaluation (`preemption.py`).
    every, steps = spec.base.train.eval_every, spec.base.train.steps
    return ASHAScheduler(
        time_attr="step",
        max_t=steps,
        grace_period=min(min(sc.grace_period, evals) * every, steps),
        reduction_factor=sc.reduction_factor,
    )


def run_sweep(
    spec: Spec,
    out=print,
    report_dir: Path | None = Path("reports"),
    resume: bool = False,
    restart: bool = False,
    resume_command: str = "",
    extend: bool = False,
) -> int:
    """Run (or resume, or extend) the whole sweep and write its report; the exit code: 0
    every trial finished, 1 some failed, 3 the tracking store stayed away (resume once it is
    back), 130 interrupted (the message says how to resume)."""
    bound_http_calls()
    # The folders it writes outside storage and store; bad data (or a vocabulary its text
    # cannot support); the storage: each one line before the tracking store is made.
    check_environment(spec, local_ray=not os.environ.get("RAY_ADDRESS"))
    models = prepare_data(spec)
    check_storage(spec)
    adopt_tracking_uri(spec, resume or extend, out)
    if resume or extend:
        check_store_kept(spec)
    tracker = Tracker(spec.tracking_uri)
    tracker.check()
    if not restart and not restorable(experiment_path(spec.storage, spec.name)):
        check_name_free(spec, tracker)  # a new sweep: before storage is written to
    lock = ExperimentLock(spec.storage, spec.name).acquire()
    cluster = monitor = None
    stops = Interrupts(spec.preempt_grace_s, out)
    try:
        marker = prepare(spec, resume, restart, tracker, out, extend)
        path = experiment_path(spec.storage, spec.name)
        growth = extension(spec, marker, path) if extend else None
        cluster = start_checked_ray(spec)
        stops.install()  # after Ray's own handlers (ray.init sets one for SIGTERM)
        # Tune reads the earlier run's state now, before any run is reopened: a file it
        # cannot read is one line, and the sweep stays as resumable as it was.
        reopen = marker is not None and bool(marker.opening) and not extend
        restore = marker is not None and not reopen and (not growth or growth.unfinished)
        tuner = restore_tuner(spec, path) if restore else None
        if marker is None:
            parent_id, base_tags = open_sweep_run(tracker, spec)
            record_forecast(tracker, parent_id, spec, concurrency(spec, cluster.resources))
            write_marker(path, new_marker(spec, parent_id, spec.plan.trials))
            record_tokenizers(tracker, parent_id, models, path, out)
        else:
            parent_id = marker.parent_run_id
            tracker.experiment(spec.name)
            tracker.reopen(parent_id)
            tracker.tag(
                parent_id, TAG_RESUMED, str(int(tracker.tags(parent_id).get(TAG_RESUMED, 0)) + 1)
            )
            base_tags = sweep_tags(spec)
            known = tracker.children(parent_id)
            done = sum(r.info.status == "FINISHED" for r in known.values())
            out(f"resuming {path} ({done} of its {len(known)} trial runs had finished)")
            if extend:  # new points may read a vocabulary the first run did not train
                record_tokenizers(tracker, parent_id, models, path, out)
        callback = MlflowCallback(RunLogger(spec, parent_id, base_tags, path), StallWatch(spec))
        wanted = spec.tracking.system_metrics
        if wanted == "on" or (wanted == "auto" and not cluster.client):
            monitor = tracker.monitor_system(parent_id)
        planned = int(marker.trials) if marker is not None and marker.trials else spec.plan.trials
        again, first = resume_command, bool(growth and growth.unfinished)
        points, ran, killed = growth.points if growth else None, [], 0
        rounds = spec.seeds.adaptive is not None and not growth  # adaptive rounds, not --extend
        if reopen:  # killed while a round's Tune run was created: that round again
            close_open_runs(tracker, parent_id)  # its trials died with that process
            points = next_seeds(spec, parent_id, out)
        while True:
            if reopen and not points:
                break
            if first:  # the experiment's own trials end first, then the new ones start
                planned, again = growth.ran, resume_command.replace("--resume", "--extend")
                out(f"extending {path}: first the {growth.unfinished} trials it had not ended")
            elif points:  # new trials, in the same Ray experiment and MLflow parent run
                write_marker(path, new_marker(spec, parent_id, len(points), opening=rounds))
                planned, again = len(points), resume_command
                if growth and points is growth.points:
                    out(f"extending {path} by {len(points)} trials")
                else:
                    out(f"adding seeds to {path}: {len(points)} trials")
            try:
                if tuner is None:
                    sealing = Seal(spec.tracking_uri, parent_id, path)
                    tuner = make_tuner(spec, callback, sealing, points)
                    with contextlib.suppress(OSError):  # under Ray Client: at Tune's first save
                        sealing.add({TUNER_FILE: read_bytes(f"{path}/{TUNER_FILE}")})
                        if points and rounds:  # recorded: no longer a half-made round
                            write_marker(path, new_marker(spec, parent_id, len(points)))
                with stops.fitting():
                    results = tuner.fit()
                record_preemption(tracker, parent_id, out)
            except BaseException as e:
                record_preemption(tracker, parent_id, out)
                lost = outage(e)
                if lost is not None:
                    out(f"{lost}\nresume with: {again}")
                    return 3
                close_open_runs(tracker, parent_id)
                tracker.end(parent_id, "KILLED")
                if isinstance(e, KeyboardInterrupt):
                    out(f"interrupted by {stops.name}; checkpoints and the experiment state "
                        f"are in {path}\nresume with: {again}")  # fmt: skip
                    return stops.exit_code
                raise
            killed += close_open_runs(tracker, parent_id)
            ended = results.num_terminated + results.num_errors
            if spec.seeds.adaptive is not None:
                # the rounds read what ran from the store, so a round's state that Tune never
                # saved (killed as it began) is recomputed there, not waited for
                planned = min(planned, len(results))
            if stops.signal is not None or ended < len(results) or len(results) < planned:
                tracker.end(parent_id, "KILLED")
                out(f"interrupted by {stops.name}: {tally(spec, results, planned)}; checkpoints "
                    f"and the experiment state are in {path}\nresume with: {again}")  # fmt: skip
                return stops.exit_code
            ran.append(results)
            if first:
                tuner, first = None, False
                continue
            points = next_seeds(spec, parent_id, out)
            if not points:
                break
            tuner = None
        rows, best, failed = summarize(spec, *ran)
        tracker.end(parent_id, "KILLED" if killed else "FINISHED" if not failed else "FAILED")
        try:
            print_summary(spec, rows, best, failed, parent_id, out)
            if report_dir is not None:
                from nlsweep.report.writer import write_report  # scipy, matplotlib: only now

                report = write_report(
                    spec.tracking_uri,
                    spec.name,
                    report_dir / f"{spec.name}.md",
                    parent_id,
                    check=stops.check,
                )
                out(f"report: {report} (and in MLflow, parent run {parent_id[:8]}: report/)")
                if stops.signal is not None:  # while it was stored: lost in a finalizer
                    out(f"interrupted by {stops.name} while the report was stored in MLflow; "
                        f"store it again with: {report_command(spec, parent_id)}")  # fmt: skip
                    return stops.exit_code
        except KeyboardInterrupt:
            out(f"interrupted by {stops.name} after every trial had ended, before the report "
                f"was written; write it with: {report_command(spec, parent_id)}")  # fmt: skip
            return stops.exit_code
        return 0 if not failed else 1
    finally:
        stops.restore()
        if monitor is not None:
            monitor.finish()
        if cluster is not None and cluster.started_here:
            ray.shutdown()
        lock.release()


def report_command(spec: Spec, parent_id: str) -> str:
    return shlex.join(["nlsweep", "report", os.path.abspath(spec.path), "--tracking-uri",
                       spec.tracking_uri, "--run-id", parent_id])  # fmt: skip


def next_seeds(spec: Spec, parent_id: str, out) -> list[dict] | None:
    """An adaptive-seeds sweep's next round: the seeds its undecided rows (and the baseline
    they are paired with) take next, read from the store (None: the seeds are fixed)."""
    if spec.seeds.adaptive is None:
        return None
    from nlsweep.report.adaptive import next_round, round_line  # scipy: only now

    prog = next_round(spec.tracking_uri, spec.name, parent_id)
    out(round_line(prog))
    return prog.points


def start_checked_ray(spec: Spec):
    """Ray for the spec's trials (started here, or the cluster joined), with every check that
    needs it made before a trial starts: the resources a trial asks for, storage every node
    reaches, and a tracking store Tune's callbacks reach under Ray Client. A Ray started here
    is shut down again when a check fails."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the compact CLIReporter table
    cluster = start_ray([p.source for p in spec.plugins if p.folder and p.source])
    try:
        try:
            check_resources(spec.resources, cluster.resources, cluster.where)
        except ConfigError as e:
            raise SpecError.at(spec, e.key, e.expected) from None
        check_shared_storage(spec, cluster.nodes)
        if cluster.client and not spec.tracking_uri.startswith(("http://", "https://")):
            raise SpecError.at(
                spec,
                "tracking_uri",
                "an MLflow server (http://HOST:PORT) with a Ray Client address: Tune writes "
                f"the runs from the cluster's head node, which cannot reach {spec.tracking_uri}",
            )
    except BaseException:
        if cluster.started_here:
            ray.shutdown()
        raise
    return cluster


def restore_tuner(spec: Spec, path: str) -> tune.Tuner:
    """The interrupted experiment at `path` (its files verified by `nlsweep.execution.seal`), its
    unfinished and errored trials to continue from their newest checkpoints; the search
    algorithm and scheduler resume their state. One line when Tune cannot read it."""
    try:
        return tune.Tuner.restore(
            path, make_trainable(spec), resume_unfinished=True, resume_errored=True
        )
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file, in any of its forms
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        why = (lines[-1] if lines else type(e).__name__)[:200]
        raise ExperimentError(
            f"{path}: Ray Tune cannot restore it ({type(e).__name__}: {why}); the sweep is "
            "unchanged: fix the storage and resume, or --restart"
        ) from None


class _Sealed:
    """A search algorithm that records the digests of the experiment state Tune has just
    written to its local staging folder, before Tune uploads it (`nlsweep.execution.seal`)."""

    seal: Seal | None = None

    def save_to_dir(self, dirpath, session_str):
        saved = super().save_to_dir(dirpath, session_str)
        if self.seal is not None:
            self.seal.add_folder(dirpath)
        return saved


class SealedVariants(_Sealed, BasicVariantGenerator):
    pass


class SealedSearch(_Sealed, SearchGenerator):
    def on_trial_result(self, trial_id, result):
        if not result.get(PREEMPTED):  # a checkpoint on a signal: no evaluation to learn from
            super().on_trial_result(trial_id, result)


def record_preemption(tracker: Tracker, parent_id: str, out) -> None:
    """What a stop signal's checkpoint request achieved: said, and counted on the parent run
    (`preempt/checkpointed`, at the step of the number of requests so far)."""
    req = preemption.REQUEST
    if req.outcome is None:
        return
    out(req.outcome)
    with contextlib.suppress(Exception):  # the store itself may be what went away
        step = len(tracker.history(parent_id, "preempt/checkpointed"))
        tracker.log(parent_id, {"preempt/checkpointed": float(req.saved)}, step=step)
    req.outcome = None


def make_tuner(
    spec: Spec,
    callback: MlflowCallback,
    seal: Seal | None = None,
    points: list | None = None,
    name: str | None = None,
    stop: tune.Stopper | None = None,
) -> tune.Tuner:
    """The Ray Tune experiment: trainable, space, search, scheduler, reporter, MLflow callback;
    with `points` (factor -> value: `--extend`, `nlsweep rerun`), only those points. A rerun
    names its own Tune experiment and stops where the run it repeats stopped (`stop`), with
    no scheduler of its own."""
    names = short_names(list(spec.space))
    reporter = EtaReporter(
        parameter_columns={p: names[p] for p in spec.space},
        metric_columns={"step": "step", spec.metric: spec.metric},
        max_report_frequency=10,
        sort_by_metric=False,
    )
    reporter.stalls = callback.stalls
    reporter.plan = (
        len(points) if points else spec.plan.trials,
        evaluations(spec),
        min(spec.max_concurrent, len(points) if points else spec.plan.trials),
        spec.scheduler.kind != "fifo",
    )
    return tune.Tuner(
        make_trainable(spec),
        param_space={p: to_tune(d) for p, d in spec.space.items()},
        tune_config=tune.TuneConfig(
            metric=spec.metric,
            mode=spec.mode,
            search_alg=make_search_alg(spec, seal, points),
            scheduler=FIFOScheduler() if stop else make_scheduler(spec),
            # Each preset point replaces one sample, its grid values fixed (Tune's own rule).
            num_samples=len(points) if points else spec.plan.num_samples,
            # A trial's process is reused for the next one (saves the torch import and start-up,
            # seconds a trial); every trial seeds its RNGs and sets its threads itself.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name or spec.name,
            stop=stop,
            storage_path=spec.storage,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            callbacks=[
                callback,
                *([callback.stalls] if callback.stalls else []),
                Preemption(name or spec.name, parallel=spec.resources.workers > 1),
            ],
            progress_reporter=reporter,
            verbose=1,
        ),
    )
