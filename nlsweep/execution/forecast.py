"""What a sweep will cost: before it starts (`--dry-run`), and while it runs (the ETA). Pure.

Before: each trial takes the median seconds per step of earlier finished trials of its size
(every model field, sequence length, batch size, precision, compile; read from the tracking
store) times its steps, else the probe's step time (`--probe`), else no estimate; the wall
time is those trials run in order `concurrency` at a time.

While it runs: a trial reports once per evaluation (`train.eval_every` steps), so its time
per report is its wall time over its reports. The remaining work is every unfinished trial's
remaining reports (all of them for a trial not started yet) at the median time per report
of the trials measured so far, plus, for each trial not started yet, the slot time the
started ones spent outside their reports (start-up, hand-over), run `concurrency` at a time.
An estimate, and labelled one: early stopping (ASHA) ends trials sooner than this assumes,
so then it is an upper bound.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from statistics import median

from nlsweep.config.units import duration

ENDED = ("TERMINATED", "ERROR")


@dataclass
class TrialProgress:
    status: str  # Tune's: PENDING, RUNNING, PAUSED, TERMINATED, ERROR
    reports: int  # results reported so far (training_iteration)
    seconds: float  # wall time of those reports (time_total_s)


def eta_s(trials: list[TrialProgress], planned: int, reports: int, concurrency: int,
          elapsed: float | None = None):  # fmt: skip
    """Seconds until the sweep ends (None before any trial has reported): `planned` trials
    in all (some perhaps not created yet), `reports` per trial. With `elapsed` (wall seconds
    since the first trial started), each trial still to start also costs the slot time the
    started ones spent outside their reports (start-up, hand-over), which for short trials
    is most of it."""
    per_report = [t.seconds / t.reports for t in trials if t.reports > 0 and t.seconds > 0]
    if not per_report:
        return None
    slots = max(concurrency, 1)
    left = sum(max(reports - t.reports, 0) for t in trials if t.status not in ENDED)
    to_start = max(planned - len(trials), 0) + sum(t.status == "PENDING" for t in trials)
    left += max(planned - len(trials), 0) * reports
    started = [t for t in trials if t.status != "PENDING"]
    overhead = 0.0
    if elapsed and started:
        busy = sum(t.seconds for t in started)
        overhead = max(elapsed * min(slots, len(started)) - busy, 0.0) / len(started)
    return (left * median(per_report) + to_start * overhead) / slots


def progress_line(trials: list[TrialProgress], planned: int, reports: int, concurrency: int,
                  early_stopping: bool = False, elapsed: float | None = None) -> str:  # fmt: skip
    """'trials: 3 done, 2 running, 7 pending; ETA ~4m10s (...)' for the progress output."""
    done = sum(t.status in ENDED for t in trials)
    running = sum(t.status == "RUNNING" for t in trials)
    pending = planned - done - running
    line = f"trials: {done} done, {running} running, {pending} pending"
    eta = eta_s(trials, planned, reports, concurrency, elapsed)
    if eta is None:
        return f"{line}; ETA after the first evaluation"
    bound = "at most " if early_stopping else "~"
    measured = sum(t.reports > 0 for t in trials)
    return (
        f"{line}; ETA {bound}{duration(eta)} (estimate: {measured} trials' time per "
        f"evaluation, {concurrency} at a time)"
    )


# Before a sweep: its cost from earlier trials of the same size, or from a probe.

SIZE_KEYS = ("data.seq_len", "data.batch_size", "train.precision", "train.compile")
"""Besides every model.* field: what sets a step's cost (the steps are counted apart)."""


def size_key(params: dict) -> str:
    """A trial config's size (flattened, values as MLflow keeps them: strings)."""
    keep = {k: str(v) for k, v in params.items() if k.startswith("model.") or k in SIZE_KEYS}
    return json.dumps(keep, sort_keys=True)


def step_times(timings: list[tuple[dict, float]]) -> dict[str, list[float]]:
    """Seconds per training step (evaluations included) of earlier finished trials, by size;
    `timings`: (flattened params, wall seconds) per run."""
    out: dict[str, list[float]] = {}
    for params, seconds in timings:
        steps = int(float(params.get("train.steps", 0) or 0))
        if steps > 0 and seconds > 0:
            out.setdefault(size_key(params), []).append(seconds / steps)
    return out


def makespan(durations: list[float], slots: int) -> float:
    """Wall time of trials run in order, each starting when one of `slots` frees."""
    free = [0.0] * max(slots, 1)
    for d in durations:
        i = free.index(min(free))
        free[i] += d
    return max(free, default=0.0)


@dataclass
class Cost:
    trial_s: list[float]  # per trial that has an estimate
    from_history: int  # of those, estimated from earlier runs of their size
    missing: int  # trials with no estimate
    wall_s: float


def sweep_cost(trials: list[tuple[dict, int]], history: dict[str, list[float]],
               probe_step_s: float | None, slots: int) -> Cost:  # fmt: skip
    """`trials`: (flattened config, steps) per trial; each takes the median seconds per step
    of earlier runs of its size, else the probe's, else has no estimate."""
    est, hist, missing = [], 0, 0
    for params, steps in trials:
        seen = history.get(size_key(params))
        if seen:
            est.append(median(seen) * steps)
            hist += 1
        elif probe_step_s:
            est.append(probe_step_s * steps)
        else:
            missing += 1
    return Cost(est, hist, missing, makespan(est, slots))


def cost_lines(cost: Cost, slots: int, where: str, probed: bool) -> list[str]:
    """What `--dry-run` prints of a `Cost`."""
    n = len(cost.trial_s) + cost.missing
    if not cost.trial_s:
        return [f"cost: no estimate: no earlier finished trials of these sizes in {where}; "
                "--probe measures one here"]  # fmt: skip
    line = (
        f"cost: about {duration(cost.wall_s)} of wall time at {slots} at a time, "
        f"{sum(cost.trial_s) / 3600:.2f} trial-hours for {len(cost.trial_s)} of {n} trials"
    )
    sources = []
    if cost.from_history:
        sources.append(f"{cost.from_history} from earlier finished trials of the same model "
                       f"and data sizes in {where}")  # fmt: skip
    if len(cost.trial_s) > cost.from_history:
        sources.append(f"{len(cost.trial_s) - cost.from_history} from the probe's step time "
                       "(an estimate: the largest trial, evaluations not included)")  # fmt: skip
    lines = [line, "  estimated " + "; ".join(sources)]
    if cost.missing:
        lines.append(f"  {cost.missing} trials have no estimate" +
                     ("" if probed else " (--probe measures one)"))  # fmt: skip
    return lines
