"""Each trial's MLflow child run, written by one writer wherever Tune runs its callbacks.

Tune calls the sweep's callback in the process that runs the experiment: the driver, or,
under Ray Client (`ray://`), an actor on the cluster's head node. It also pickles the
callback into the experiment folder and rebuilds it on `--resume`. So a `RunLogger` carries
only settings (tracking URI, spec, parent run, experiment path) and rebuilds its state from
MLflow the first time it is used in a process: the parent's child runs by trial id, and the
last step each one logged. A trial keeps its run across retries and resumes; results at
steps a run already holds (a trial restarts from its newest checkpoint, which may be older
than its last report) are not logged twice.

Every write is an operation (plain JSON data) in an ordered queue. While the tracking store
is unreachable the queue waits and is retried every few seconds, so an outage costs no
metric and no trial; one longer than `tracking.outage_s` stops the sweep with one line and
leaves the queue beside the experiment (`nlsweep-pending.json`), which the resumed sweep
writes first, in order, before anything else.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import deque
from pathlib import Path

import torch

from nlsweep.config.builder import flatten, to_dict
from nlsweep.config.space import as_spec, trial_label
from nlsweep.data.config import corpus_kind
from nlsweep.evaluation import EVAL_DONE, tag_of
from nlsweep.execution.experiment import clear_pending, read_pending, write_pending
from nlsweep.execution.preemption import PREEMPTED
from nlsweep.spec import VARIANT, Spec, describe, swept_values
from nlsweep.tracking.store import Tracker, disk_full, free_space, git_commit, transient
from nlsweep.tracking.tags import (
    TAG_BASELINE,
    TAG_CHECKPOINT,
    TAG_COMMIT,
    TAG_CORPUS_KIND,
    TAG_DIVERGED,
    TAG_ERROR,
    TAG_FINGERPRINT,
    TAG_HARDWARE,
    TAG_PLUGINS,
    TAG_PREEMPT_STEP,
    TAG_RERUN_OF,
    TAG_RESUMED,
    TAG_ROLE,
    TAG_SHA,
    TAG_SPACE,
    TAG_SPEC,
    TAG_SPEC_SHOWN,
    TAG_SPEC_TEXT,
    TAG_STOPPED,
    TAG_TRIAL,
    TAG_VARIANTS,
    TAG_VERSIONS,
    WARNING_PREFIX,
)
from nlsweep.tracking.view import best_key, objective_first
from nlsweep.training.runtime import DIVERGED, describe_hardware

METRIC_PREFIXES = (
    "train", "val", "perf", "model", "cms", "data", "state", "optim", "surprise", "memory",
    "cms_inner", "teach", "eval", "phase", "forgetting", "continual",
)  # fmt: skip
WARNINGS = "warnings"
"""Result key of the final report: JSON {name: why} of configured paths that never fired."""
GPU_KEY = "gpu"
"""Result key: the GPUs Ray gave the trial and what CUDA_VISIBLE_DEVICES said (a run tag)."""
VERSIONS = "versions"
"""Result key: the torch and Python versions the trial ran with (a run tag)."""
TAG_GPU = "nlsweep.gpu"
FALLBACK = "checkpoint_fallback"
"""Result key: the trial's newest checkpoint was unreadable and an older one was restored
(a run tag, `nlsweep.checkpoint_fallback`)."""
RETRY_EVERY_S = 5.0


class TrackingOutage(RuntimeError):
    """The tracking store stayed away longer than `tracking.outage_s`, or a disk the sweep
    writes is full: the sweep stops at once, resumable (exit 3); one line."""


STORAGE_FULL = "storage_full"
"""Result key: the trial could not write its checkpoint to storage, its disk full (the
error's first line)."""


def metrics_of(result: dict) -> dict[str, float]:
    """The loggable metrics of a Tune result (Ray's own keys, strings and flags dropped)."""
    return {
        k: v
        for k, v in result.items()
        if "/" in k
        and k.split("/")[0] in METRIC_PREFIXES
        and isinstance(v, (int, float))
        and not isinstance(v, bool)
    }


class RunLogger:
    def __init__(
        self,
        spec: Spec,
        parent_id: str,
        base_tags: dict,
        experiment: str,
        repeats: dict[str, str] | None = None,
    ):
        self.spec = spec
        self.parent_id = parent_id
        self.base_tags = dict(base_tags)
        self.experiment = experiment
        self.repeats = dict(repeats or {})
        """`nlsweep rerun`: repeat_key(swept values) -> the run that trial repeats."""
        self._ready = False

    def __getstate__(self):
        keep = ("spec", "parent_id", "base_tags", "experiment", "repeats")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._ready = False

    # -- state, rebuilt from MLflow in the process that writes ------------------------------

    def _setup(self) -> None:
        if self._ready:
            return
        self.tracker = Tracker(self.spec.tracking_uri)
        self.queue: deque[dict] = deque(read_pending(self.experiment))
        self.runs: dict[str, str] = {}
        self.known_runs: dict[str, object] = {}
        self.steps: dict[str, int] = {}
        self.last_step: dict[str, int] = {}
        self.diverged: set[str] = set()
        self.latest: dict[str, float] = {}  # trial -> its newest objective value
        self.finals: dict[str, float] = {}  # finished trial -> its final objective value
        self.outage_since: float | None = None
        self.next_try = 0.0
        self._ready = True
        try:
            self.tracker.experiment_id = self.tracker.experiment_of(self.parent_id)
            self.runs = {t: r.info.run_id for t, r in self.tracker.children(self.parent_id).items()}
            if self.queue:  # a stopped sweep's writes come first, in their order
                self._flush(wait=True)
                clear_pending(self.experiment)
            for tid, run in self.tracker.children(self.parent_id).items():
                self.runs[tid] = run.info.run_id
                self.known_runs[tid] = run
                self.last_step[tid] = self.tracker.last_step(run.info.run_id, self.spec.metric)
                if run.info.status == "FINISHED" and self.spec.metric in run.data.metrics:
                    self.finals[tid] = run.data.metrics[self.spec.metric]
        except TrackingOutage:
            raise
        except Exception as e:  # noqa: BLE001 - the driver checked the store moments ago
            self._ready = False
            raise TrackingOutage(
                f"tracking_uri {self.spec.tracking_uri}: unreachable when the sweep began "
                f"({_one_line(e)})"
            ) from None

    # -- the queue ------------------------------------------------------------------------

    def _put(self, kind: str, trial: str | None, **args) -> None:
        self.queue.append({"kind": kind, "trial": trial, **args})

    def _run_of(self, op: dict) -> str:
        return self.parent_id if op["trial"] is None else self.runs[op["trial"]]

    def _apply(self, op: dict) -> None:
        kind, t = op["kind"], self.tracker
        if kind == "start":
            self.runs[op["trial"]] = t.start_run(
                op["name"], op["params"], op["tags"], parent_id=self.parent_id
            )
        elif kind == "log":
            t.log(self._run_of(op), op["metrics"], step=op["step"])
        elif kind == "tag":
            t.tag(self._run_of(op), op["key"], op["value"])
        elif kind == "untag":
            t.untag(self._run_of(op), op["key"])
        elif kind == "reopen":
            t.reopen(self._run_of(op))
        elif kind == "end":
            t.end(self._run_of(op), op["status"])
        elif kind == "text":
            t.log_text(self._run_of(op), op["text"], op["file"])
        elif kind == "checkpoint":
            with tempfile.TemporaryDirectory(prefix="nlsweep-ckpt-") as folder:
                _fetch(op["uri"], folder)
                t.log_artifacts(self._run_of(op), folder, "checkpoint")
        else:
            raise ValueError(f"unknown tracking operation {kind!r}")

    def _flush(self, wait: bool = False) -> None:
        """Write queued operations in order; keep the rest while the store is away."""
        while self.queue:
            now = time.monotonic()
            if self.outage_since is not None and now < self.next_try:
                if not wait:
                    return
                time.sleep(self.next_try - now)
                continue
            try:
                self._apply(self.queue[0])
            except Exception as e:  # noqa: BLE001 - classified just below
                if disk_full(e):
                    self._give_up(e, full=True)
                if not transient(e):
                    raise
                now = time.monotonic()
                self.outage_since = self.outage_since or now
                self.next_try = now + RETRY_EVERY_S
                if now - self.outage_since > self.spec.tracking.outage_s:
                    self._give_up(e)
                continue
            self.queue.popleft()
            self.outage_since = None

    def _give_up(self, e: BaseException, full: bool = False) -> None:
        kept = write_pending(self.experiment, list(self.queue))
        self.queue.clear()
        if full:
            free = free_space(self.spec.tracking_uri)
            raise TrackingOutage(
                f"tracking_uri {self.spec.tracking_uri}: its disk is full"
                f"{f' ({free})' if free else ''}; the sweep stopped with every trial's "
                f"checkpoints intact and its unwritten MLflow records in {kept}; free space, "
                "then resume"
            )
        raise TrackingOutage(
            f"tracking_uri {self.spec.tracking_uri}: unreachable for more than "
            f"{self.spec.tracking.outage_s:g} s ({_one_line(e)}); the sweep stopped with every "
            f"trial's checkpoints intact and its unwritten MLflow records in {kept}"
        )

    # -- what Tune reports ----------------------------------------------------------------

    def trial_started(self, tid: str, config: dict) -> None:
        self._setup()
        values = swept_values(self.spec, config)
        cfg = self.spec.trial_config(values)
        self.steps[tid] = cfg.train.steps
        if tid in self.runs or any(o["kind"] == "start" and o["trial"] == tid for o in self.queue):
            if tid in self.known_runs:  # first start of a trial from an earlier run
                run = self.known_runs.pop(tid)
                self._put("reopen", tid)
                self._put("untag", tid, key=TAG_ERROR)
                resumed = int(run.data.tags.get(TAG_RESUMED, "0")) + 1
                self._put("tag", tid, key=TAG_RESUMED, value=str(resumed))
            self._flush()
            return  # a retry within this run: same MLflow run, already open
        params = flatten(to_dict(cfg))
        if VARIANT in values:
            params[VARIANT] = values[VARIANT]
        tags = {**self.base_tags, TAG_TRIAL: tid, TAG_ROLE: "trial",
                TAG_CORPUS_KIND: corpus_kind(cfg.data)}  # fmt: skip
        name = trial_label(values)
        if self.repeats:
            tags[TAG_RERUN_OF] = self.repeats[repeat_key(values)]
            name = f"{name} (rerun of {tags[TAG_RERUN_OF][:8]})"
        self._put("start", tid, name=name, params=params, tags=tags)
        text = json.dumps({"trial_id": tid, "swept": values, "config": to_dict(cfg)}, indent=1)
        self._put("text", tid, text=text, file="config.json")
        self._put("text", None, text=text, file=f"trial_configs/{tid}.json")
        self._flush()

    def trial_result(self, tid: str, result: dict) -> None:
        self._setup()
        step = int(result["step"])
        # first, so MLflow's compare page plots the objective before any other metric
        metrics = objective_first(metrics_of(result), self.spec.metric)
        if result.get(FALLBACK):  # its step was logged before: the tag alone is news
            self._put("tag", tid, key=f"nlsweep.{FALLBACK}", value=result[FALLBACK])
        if result.get(PREEMPTED):  # a checkpoint on a stop signal, without an evaluation
            self._put("tag", tid, key=TAG_PREEMPT_STEP, value=str(step))
            self._flush()
            return
        if DIVERGED in result:
            self.diverged.add(tid)
            self._put("tag", tid, key=TAG_DIVERGED, value=result[DIVERGED])
            metrics = {}  # its +-inf objective stays out of the metric history
        elif step <= self.last_step.get(tid, 0):
            self._flush()
            return  # logged before this trial restarted from an older checkpoint
        if metrics:
            self._put("log", tid, metrics=metrics, step=step)
            if self.spec.metric in metrics:
                self.latest[tid] = metrics[self.spec.metric]
        for name, why in json.loads(result.get(WARNINGS) or "{}").items():
            self._put("tag", tid, key=f"{WARNING_PREFIX}.{name}", value=why)
        for task, settings in json.loads(result.get(EVAL_DONE) or "{}").items():
            self._put("tag", tid, key=tag_of(task), value=settings)  # what `nlsweep eval` skips
        if tid not in self.last_step:
            for key, tag in (
                ("hardware", TAG_HARDWARE),
                (GPU_KEY, TAG_GPU),
                (VERSIONS, TAG_VERSIONS),
            ):
                if key in result:
                    self._put("tag", tid, key=tag, value=str(result[key]))
        self.last_step[tid] = step
        self._flush()

    def trial_completed(self, tid: str, checkpoint_uri: str | None) -> None:
        self._setup()
        if tid in self.diverged:
            self._put("end", tid, status="FAILED")
        else:
            if self.last_step.get(tid, 0) < self.steps.get(tid, 0):
                self._put("tag", tid, key=TAG_STOPPED, value=self.spec.scheduler.kind)
            if checkpoint_uri:  # what `nlsweep eval` and lm-eval's `nlsweep` model load
                self._put("tag", tid, key=TAG_CHECKPOINT, value=checkpoint_uri)
            if checkpoint_uri and self.spec.tracking.log_checkpoints == "final":
                self._put("checkpoint", tid, uri=checkpoint_uri)
            self._put("end", tid, status="FINISHED")
            self._best_so_far(tid)
        self._flush()

    def _best_so_far(self, tid: str) -> None:
        """On the parent run, `best/OBJECTIVE`: the best final objective of the trials
        finished so far, at the step of how many have (what the MLflow UI's parent row and
        chart show first); not for `nlsweep rerun`'s repeats, which no pool counts."""
        if self.repeats or tid not in self.latest:
            return
        self.finals[tid] = self.latest[tid]
        best = (min if self.spec.mode == "min" else max)(self.finals.values())
        self._put("log", None, metrics={best_key(self.spec.metric): best}, step=len(self.finals))

    def trial_errored(self, tid: str, error: str) -> None:
        self._setup()
        self._put("tag", tid, key=TAG_ERROR, value=error)
        self._put("end", tid, status="FAILED")
        self._flush()

    def finish(self) -> None:
        """The experiment ended: write what is queued, waiting up to `outage_s` for it. A
        resumed sweep whose trials had all ended (during the outage that stopped it) sends no
        trial event, so its held-back records are written here."""
        self._setup()
        self._flush(wait=True)


def repeat_key(values: dict) -> str:
    """The swept values of a trial as one key (`RunLogger.repeats`)."""
    return json.dumps(values, sort_keys=True)


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[-1] if lines else type(e).__name__)[:300]


def _fetch(uri: str, folder: str) -> None:
    """Copy a checkpoint folder (local path or storage URI, as Ray keeps it) to `folder`."""
    import pyarrow.fs

    if "://" in uri:
        fs, root = pyarrow.fs.FileSystem.from_uri(uri)
    else:
        fs, root = pyarrow.fs.LocalFileSystem(), str(Path(uri).resolve())
    pyarrow.fs.copy_files(root, folder, source_filesystem=fs)


def outage(e: BaseException) -> TrackingOutage | None:
    """The tracking outage behind an error Tune or Ray Client wrapped, if that is what it is."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, TrackingOutage):
            return e
        lines = [ln for ln in str(e).splitlines() if "TrackingOutage: " in ln]
        if lines:  # rebuilt from its text by Ray Client or Tune
            return TrackingOutage(lines[-1].split("TrackingOutage: ", 1)[1].strip())
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def close_open_runs(tracker: Tracker, parent_id: str) -> int:
    """Mark the runs of trials that never ended (the sweep was stopped) KILLED."""
    open_runs = [r for r in tracker.children(parent_id).values() if r.info.status == "RUNNING"]
    for r in open_runs:
        tracker.end(r.info.run_id, "KILLED")
    return len(open_runs)


def sweep_tags(spec: Spec) -> dict[str, str]:
    """Tags every run of the sweep carries: spec file, its hash, the code's commit."""
    shown = os.path.relpath(spec.path) if spec.path.startswith(os.getcwd() + os.sep) else spec.path
    tags = {TAG_SPEC: spec.path, TAG_SPEC_SHOWN: shown, TAG_SHA: spec.sha256}
    commit = git_commit()
    if commit:
        tags[TAG_COMMIT] = commit
    return tags


def open_sweep_run(tracker: Tracker, spec: Spec) -> tuple[str, dict[str, str]]:
    """The sweep's parent run (spec settings and base config as params); its shared tags."""
    tracker.experiment(spec.name)
    tracker.publish_view(spec.metric, spec.mode, list(spec.space))
    base_tags = sweep_tags(spec)
    params = {**describe(spec), **{f"base.{k}": v for k, v in flatten(to_dict(spec.base)).items()}}
    tags = {
        **base_tags,
        TAG_ROLE: "sweep",
        TAG_FINGERPRINT: spec.fingerprint,
        "mlflow.note.content": spec.description,
        TAG_SPEC_TEXT: spec.text,
        TAG_SPACE: json.dumps({p: as_spec(d) for p, d in spec.space.items()}),
        TAG_BASELINE: json.dumps(spec.baseline),
        TAG_VARIANTS: json.dumps(spec.variants),
        TAG_HARDWARE: describe_hardware(torch.device("cpu")),
    }
    if spec.plugins:
        tags[TAG_PLUGINS] = json.dumps([p.record for p in spec.plugins])
    parent_id = tracker.start_run(spec.name, params, tags)
    tracker.log_text(parent_id, spec.text, f"spec/{Path(spec.path).name}")
    return parent_id, base_tags
