"""What Tune tells the sweep while it runs: trial events -> MLflow (through `RunLogger`,
with stall reasons from `stalls.py`), and the progress table with its ETA line.

A trial's pickled error (`error.pkl`, which Tune's result collection would unpickle from
storage) is deleted as soon as Tune has recorded it: nothing read from storage is ever
unpickled, and a 0-byte one (a full disk) cannot crash the driver; Tune then reads the
error's text (`error.txt`).
"""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

import ray
from ray import tune

from nlsweep.execution.forecast import TrialProgress, progress_line
from nlsweep.execution.runlog import STORAGE_FULL, RunLogger, TrackingOutage
from nlsweep.execution.stalls import StallWatch
from nlsweep.tracking.store import free_space


class MlflowCallback(tune.Callback):
    """Tune's hooks -> the sweep's `RunLogger` (which pickles as settings and rebuilds its
    state from MLflow in whatever process Tune runs it: driver, or Ray Client's actor)."""

    def __init__(self, log: RunLogger, stalls: StallWatch | None = None):
        self.log = log
        self.stalls = stalls  # why a trial's last failure was a stall, when it was

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get(STORAGE_FULL):
            # Ended here, not at Ray's shutdown, whose SIGTERM prints each trial's traceback.
            for t in trials:
                actor = getattr(t.temporary_state, "ray_actor", None)
                if actor is not None:
                    with contextlib.suppress(Exception):
                        ray.kill(actor, no_restart=True)
            storage = self.log.spec.storage
            free = free_space(storage)
            raise TrackingOutage(
                f"storage {storage}: its disk is full" + (f" ({free})" if free else "")
                + f"; trial {trial.trial_id} could not write its checkpoint at step "
                f"{int(result.get('step', 0))} ({result[STORAGE_FULL]}); free space, then resume"
            )  # fmt: skip
        self.log.trial_result(trial.trial_id, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.log.trial_completed(trial.trial_id, _checkpoint_uri(trial))

    def on_trial_recover(self, iteration, trials, trial, **info):
        _drop_pickled_error(trial)

    def on_trial_start(self, iteration, trials, trial, **info):
        # the kernel's OOM-kill count when the trial started: a rise names its death
        self.__dict__.setdefault("oom_kills", {})[trial.trial_id] = kernel_oom_kills()
        self.log.trial_started(trial.trial_id, trial.config)

    def on_trial_error(self, iteration, trials, trial, **info):
        _drop_pickled_error(trial)
        stalled = self.stalls.stalled.pop(trial.trial_id, None) if self.stalls else None
        before = self.__dict__.get("oom_kills", {}).get(trial.trial_id)
        why = stalled or oom_reason(_last_error_line(trial), trial.last_result or {}, before)
        self.log.trial_errored(trial.trial_id, why)

    def on_experiment_end(self, trials, **info):
        for t in trials:  # Tune's results would unpickle them from storage next
            _drop_pickled_error(t)
        self.log.finish()


def _checkpoint_uri(trial) -> str | None:
    """Where Ray keeps the trial's newest checkpoint, as a path or a storage URI."""
    ckpt = getattr(trial, "checkpoint", None)
    if ckpt is None:
        return None
    kind = ckpt.filesystem.type_name
    return ckpt.path if kind == "local" else f"{kind}://{ckpt.path}"


def _last_error_line(trial) -> str:
    try:
        lines = [ln for ln in Path(trial.error_file).read_text().splitlines() if ln.strip()]
        return lines[-1] if lines else "unknown error"
    except (OSError, TypeError):
        return "unknown error"


class EtaReporter(tune.CLIReporter):
    """Tune's progress table, with a line of trials done/running/pending and an ETA."""

    plan: tuple = (0, 1, 1, False)  # planned trials, reports per trial, concurrency, ASHA

    def should_report(self, trials, done=False):
        """Also at once when a trial turns late (between the table's usual refreshes)."""
        stalls = getattr(self, "stalls", None)
        late = {tid for tid, _ in stalls.late(trials)} if stalls is not None else set()
        told = self.__dict__.setdefault("told_late", set())
        fresh = late - told
        told.intersection_update(late)  # a trial that reported again may turn late again
        told.update(late)
        return bool(fresh) or super().should_report(trials, done)

    def report(self, trials, done, *sys_info):
        now = [
            TrialProgress(
                t.status,
                int((t.last_result or {}).get("training_iteration", 0)),
                float((t.last_result or {}).get("time_total_s", 0.0)),
            )
            for t in trials
        ]
        planned, reports, concurrency, asha = self.plan
        if getattr(self, "first_start", None) is None and any(t.status != "PENDING"
                                                               for t in trials):  # fmt: skip
            self.first_start = time.monotonic()
        start = getattr(self, "first_start", None)
        elapsed = time.monotonic() - start if start is not None else None
        line = progress_line(now, max(planned, len(trials)), reports, concurrency, asha,
                             elapsed)  # fmt: skip
        stalls = getattr(self, "stalls", None)
        late = stalls.late(trials) if stalls is not None else []
        if late:  # silent past half their stall bound (`stalls.py`)
            line += "; late: " + ", ".join(f"{tid} (silent {s:.0f} s)" for tid, s in late)
        super().report(trials, done, *sys_info, line)


def _drop_pickled_error(trial) -> None:
    meta = getattr(trial, "run_metadata", None)
    name = getattr(meta, "pickled_error_filename", None)
    local = getattr(getattr(trial, "storage", None), "trial_fs_path", None)
    if not name or not local:
        return
    meta.pickled_error_filename = None  # Tune reads the error's text instead
    fs = trial.storage.storage_filesystem
    with contextlib.suppress(Exception):  # gone already, or storage away: Tune reads text
        fs.delete_file(Path(local, name).as_posix())


def kernel_oom_kills() -> int | None:
    """The kernel's count of processes its OOM killer ended (`oom_kill` in /proc/vmstat)."""
    try:
        for line in Path("/proc/vmstat").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def oom_reason(error: str, last: dict, kills_before: int | None) -> str:
    """The failure's line, named as running out of memory when Ray's memory monitor says so,
    or when the worker died while the kernel's OOM killer counted a kill on this machine;
    with the trial's last reported peak memory."""
    peak = last.get("perf/cpu_rss_peak_mb")
    at = f"; its last reported peak RSS {peak / 1024:.2f} GB" if peak else ""
    if "OutOfMemoryError" in error or "running low on memory" in error:
        return f"out of memory: Ray's memory monitor killed it{at} ({error[:200]})"
    died = "died" in error.lower() or "SIGKILL" in error
    here = last.get("hostname") in (None, socket.gethostname())
    now = kernel_oom_kills()
    if died and here and None not in (now, kills_before) and now > kills_before:
        return f"out of memory: the kernel's OOM killer ended its worker{at} ({error[:200]})"
    return error
