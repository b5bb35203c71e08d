"""Stall detection: a trial that stops reporting (its worker hung, stopped, deadlocked) is
killed, so that Tune retries it from its newest checkpoint (`max_failures`) or fails it,
instead of the sweep waiting forever.

    silence     seconds since the trial's last report (or its start, before the first)
    bound       train.stall_s when set; else max(FLOOR, 10 x the trial's longest gap between
                reports so far), so a bound never comes from a guess about the model: it
                grows with what the trial has shown it needs (the first report's gap holds
                the start-up)
    late        silence > bound / 2: named on the progress line
    stalled     silence > bound: its actor is killed (`ray.kill`; the process itself too when
                it runs on this machine, since a stopped process answers no request), and
                if that was its last chance its MLflow run is FAILED with reason
                "stalled: no report for N s"

Tune calls `on_step_begin` every turn of its loop, with or without results, so the check
runs while every trial is silent.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time

import ray
from ray import tune

from nlsweep.spec import Spec, swept_values

FLOOR = 600.0
FACTOR = 10.0


class StallWatch(tune.Callback):
    def __init__(self, spec: Spec):
        self.spec = spec
        self.last: dict[str, float] = {}
        self.gap: dict[str, float] = {}
        self.pid: dict[str, tuple[str, int]] = {}
        self.stalled: dict[str, str] = {}
        """trial id -> why its last failure was a stall (taken by the MLflow callback)."""
        self.kills = 0

    def __getstate__(self):  # rebuilt empty where Tune runs it (timings are per process)
        return {"spec": self.spec}

    def __setstate__(self, state):
        self.__init__(state["spec"])

    def bound(self, trial) -> float:
        set_s = self.spec.trial_config(swept_values(self.spec, trial.config)).train.stall_s
        if set_s:
            return float(set_s)
        return max(FLOOR, FACTOR * self.gap.get(trial.trial_id, 0.0))

    def on_trial_start(self, iteration, trials, trial, **info):
        self.last[trial.trial_id] = time.monotonic()
        self.pid.pop(trial.trial_id, None)  # a new process: known from its first report

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.on_trial_start(iteration, trials, trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        now, tid = time.monotonic(), trial.trial_id
        if tid in self.last:
            self.gap[tid] = max(self.gap.get(tid, 0.0), now - self.last[tid])
        self.last[tid] = now
        self.stalled.pop(tid, None)  # alive again: a later failure is not this stall
        if "pid" in result and "hostname" in result:
            self.pid[tid] = (str(result["hostname"]), int(result["pid"]))

    def late(self, trials) -> list[tuple[str, float]]:
        """(trial id, seconds silent) of running trials past half their bound."""
        now = time.monotonic()
        return [(t.trial_id, now - self.last[t.trial_id]) for t in trials
                if t.status == "RUNNING" and t.trial_id in self.last
                and now - self.last[t.trial_id] > self.bound(t) / 2]  # fmt: skip

    def on_step_begin(self, iteration, trials, **info):
        now = time.monotonic()
        for t in trials:
            tid = t.trial_id
            if t.status != "RUNNING" or tid not in self.last:
                continue
            silent = now - self.last[tid]
            if silent <= self.bound(t):
                continue
            self.stalled[tid] = f"stalled: no report for {silent:.0f} s"
            self.last[tid] = now  # one kill per stall
            self.kills += 1
            self._kill(t)

    def _kill(self, trial) -> None:
        actor = getattr(trial.temporary_state, "ray_actor", None)
        if actor is not None:
            ray.kill(actor, no_restart=True)
        host, pid = self.pid.get(trial.trial_id, ("", 0))
        if pid and host == socket.gethostname():
            with contextlib.suppress(OSError):  # already gone
                os.kill(pid, signal.SIGKILL)
