"""Checkpoint on a stop signal: in-flight trials save their training state at the step they
are on, within `preempt_grace_s`, before Tune stops them, so that a preempted sweep loses no
training (not only what happened since each trial's last periodic checkpoint).

    driver     the signal handler only records the request (no I/O in a handler); Tune's
               next loop turn (`Preemption.on_step_begin`) publishes it in Ray's internal
               key-value store under the experiment's name, notes the trials then RUNNING,
               and asks Tune to stop (its own graceful stop, the SIGUSR1 handler) once
               each of them has reported its checkpoint, or ended, or the grace ran out
    trial      `CheckpointRequest` reads the key at most once a second between training
               steps; once per request, the trainable reports a checkpoint-only result:
               the step, the `PREEMPTED` mark, the last evaluation's objective (NaN before
               the first) and the complete training state. Tune registers and keeps it as
               any other checkpoint; the MLflow writer and the searcher skip the result (it
               holds no evaluation) and ASHA counts steps, so neither sees a difference
    resumed    the trial continues from that step, exactly (the state carries the partial
               interval's accumulators), and logs the same metrics at the same steps as a
               run never stopped

A data-parallel trial (`resources.workers > 1`) would need its workers to agree on the
step, a collective per poll: it resumes from its newest periodic checkpoint instead, and
the ending says how many trials could not checkpoint.
"""

from __future__ import annotations

import math
import time

from ray import tune
from ray.experimental import internal_kv

PREEMPTED = "preempt_checkpoint"
"""Result key of a checkpoint-only report (its value: 1.0)."""
NAMESPACE = "nlsweep"
POLL_S = 1.0


def _key(experiment: str) -> str:
    return f"preempt:{experiment}"


class _Request:
    """What the signal handler recorded for this driver process (module state: the callback
    Tune runs may be a copy restored from the experiment's saved tuner)."""

    def __init__(self):
        self.clear()

    def clear(self) -> None:
        self.at: float | None = None
        self.stop = None  # Tune's graceful stop, to call from Tune's loop (main thread)
        self.grace_s = 0.0
        self.out = print
        self.outcome: str | None = None
        self.saved = 0
        self.watched = False  # some Preemption callback is in the running experiment


REQUEST = _Request()


def ask(grace_s: float, stop, out=print) -> bool:
    """From the signal handler: ask the running trials to checkpoint first, then `stop`.
    False (the caller stops at once) with no grace, or with no Preemption callback in the
    experiment Tune runs to carry it out."""
    if grace_s <= 0 or not REQUEST.watched:
        return False
    REQUEST.at, REQUEST.stop, REQUEST.grace_s = time.monotonic(), stop, grace_s
    REQUEST.out = out
    return True


class Preemption(tune.Callback):
    """Carries out a checkpoint request in Tune's loop (see the module docstring)."""

    def __init__(self, experiment: str, parallel: bool = False):
        self.experiment, self.parallel = experiment, parallel
        self._reset()

    def _reset(self) -> None:
        self.begun = False  # the request seen: the running trials noted, asked
        self.published = False
        self.waiting: set[str] = set()
        self.saved: dict[str, int] = {}  # trial id -> the step it checkpointed at
        self.unable, self.unable_n = "", 0  # why the running trials cannot be asked, how many

    def __getstate__(self):
        return {"experiment": self.experiment, "parallel": self.parallel}

    def __setstate__(self, state):
        self.__init__(**state)

    def setup(self, **info):
        REQUEST.watched = True
        if internal_kv._internal_kv_initialized():
            # a request an earlier driver of this experiment published and never took back
            internal_kv._internal_kv_del(_key(self.experiment), namespace=NAMESPACE)

    def on_step_begin(self, iteration, trials, **info):
        if REQUEST.at is None or REQUEST.stop is None:
            return
        if not self.begun:
            self.begun = True
            running = {t.trial_id for t in trials if t.status == "RUNNING"}
            if self.parallel:
                self.unable = "data-parallel trials: their workers do not checkpoint on a signal"
            elif not internal_kv._internal_kv_initialized():
                self.unable = "Ray's key-value store, which carries the request, is not reachable"
            self.unable_n, self.waiting = (len(running), set()) if self.unable else (0, running)
            if self.waiting:
                internal_kv._internal_kv_put(
                    _key(self.experiment), repr(REQUEST.at), namespace=NAMESPACE
                )
                self.published = True
                n, grace = len(self.waiting), REQUEST.grace_s
                REQUEST.out(f"stopping: {n} running trials asked to checkpoint where they are "
                            f"first (preempt_grace_s {grace:g} s)")  # fmt: skip
        if self.waiting and time.monotonic() - REQUEST.at <= REQUEST.grace_s:
            return
        self._finish()

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        # Tune registers the checkpoint right after this hook, before its loop turns again:
        # a stop from the next turn keeps it in the experiment state Tune saves last.
        result = trial.last_result or {}
        if result.get(PREEMPTED) and trial.trial_id in self.waiting:
            self.waiting.discard(trial.trial_id)
            self.saved[trial.trial_id] = int(result["step"])

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.waiting.discard(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.waiting.discard(trial.trial_id)

    def _finish(self) -> None:
        stop, steps = REQUEST.stop, sorted(self.saved.values())
        asked = len(steps) + len(self.waiting)
        parts = []
        if asked:
            parts.append(f"at the signal, {len(steps)} of {asked} running trials saved a "
                         "checkpoint where they were"
                         + (f" (steps {', '.join(map(str, steps))})" if steps else ""))  # fmt: skip
        if self.waiting:
            parts.append(f"{len(self.waiting)} did not within preempt_grace_s "
                         f"{REQUEST.grace_s:g} s and resume from their last periodic "
                         "checkpoint")  # fmt: skip
        if self.unable_n:
            parts.append(f"{self.unable_n} running trials resume from their last periodic "
                         f"checkpoint ({self.unable})")  # fmt: skip
        REQUEST.outcome, REQUEST.saved = "; ".join(parts) or None, len(steps)
        REQUEST.at = REQUEST.stop = None
        if self.published:
            internal_kv._internal_kv_del(_key(self.experiment), namespace=NAMESPACE)
        self._reset()
        stop()


class CheckpointRequest:
    """In a trial: whether the driver asks for a checkpoint now (once per request; Ray's
    key-value store read at most every POLL_S seconds, so a step costs nothing)."""

    def __init__(self, experiment: str):
        self.key = _key(experiment)
        self.next = 0.0
        self.done: bytes | None = None

    def __call__(self) -> bool:
        now = time.monotonic()
        if now < self.next or not internal_kv._internal_kv_initialized():
            return False
        self.next = now + POLL_S
        token = internal_kv._internal_kv_get(self.key, namespace=NAMESPACE)
        if token is None or token == self.done:
            return False
        self.done = token
        return True


def checkpoint_only_result(step: int, metric: str, history: list[dict]) -> dict:
    """The report that carries a checkpoint on request: Tune requires the objective in every
    result, so it repeats the last evaluation's (NaN before the first)."""
    last = history[-1].get(metric, math.nan) if history else math.nan
    return {"step": step, metric: last, PREEMPTED: 1.0}
