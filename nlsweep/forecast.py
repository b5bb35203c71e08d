"""How long the rest of a sweep will take, from what its trials measured so far. Pure.

A trial reports once per evaluation (`train.eval_every` steps), so its time per report is
its wall time over its reports. The remaining work of a sweep is every unfinished trial's
remaining reports (all of them for a trial not started yet) at the median time per report
of the trials measured so far, run `concurrency` at a time. An estimate, and labelled one:
early stopping (ASHA) ends trials sooner than this assumes, so then it is an upper bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import median

ENDED = ("TERMINATED", "ERROR")


@dataclass
class TrialProgress:
    status: str  # Tune's: PENDING, RUNNING, PAUSED, TERMINATED, ERROR
    reports: int  # results reported so far (training_iteration)
    seconds: float  # wall time of those reports (time_total_s)


def eta_s(trials: list[TrialProgress], planned: int, reports: int, concurrency: int):
    """Seconds until the sweep ends (None before any trial has reported): `planned` trials
    in all (some perhaps not created yet), `reports` per trial."""
    per_report = [t.seconds / t.reports for t in trials if t.reports > 0 and t.seconds > 0]
    if not per_report:
        return None
    left = sum(max(reports - t.reports, 0) for t in trials if t.status not in ENDED)
    left += max(planned - len(trials), 0) * reports
    return left * median(per_report) / max(concurrency, 1)


def progress_line(trials: list[TrialProgress], planned: int, reports: int, concurrency: int,
                  early_stopping: bool = False) -> str:  # fmt: skip
    """'trials: 3 done, 2 running, 7 pending; ETA ~4m10s (...)' for the progress output."""
    done = sum(t.status in ENDED for t in trials)
    running = sum(t.status == "RUNNING" for t in trials)
    pending = planned - done - running
    line = f"trials: {done} done, {running} running, {pending} pending"
    eta = eta_s(trials, planned, reports, concurrency)
    if eta is None:
        return f"{line}; ETA after the first evaluation"
    bound = "at most " if early_stopping else "~"
    measured = sum(t.reports > 0 for t in trials)
    return (
        f"{line}; ETA {bound}{duration(eta)} (estimate: {measured} trials' time per "
        f"evaluation, {concurrency} at a time)"
    )


def duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
