"""What a sweep prints: the dry-run plan before, the summary table and pointers after.

Nothing here starts Ray or writes MLflow; results are read from Tune's ResultGrid entries.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from tabulate import tabulate

from nlsweep.config.builder import flatten, to_dict
from nlsweep.config.resources import local_resources
from nlsweep.config.space import grid_points, short_names, trial_label
from nlsweep.execution.experiment import filesystem
from nlsweep.spec import Spec, swept_values
from nlsweep.tracking.store import Tracker, describe_store
from nlsweep.tracking.tags import TAG_DIVERGED, TAG_ERROR, TAG_FORECAST, TAG_FORECAST_S
from nlsweep.tracking.view import ui_command, ui_links
from nlsweep.training.runtime import DIVERGED


def concurrency(spec: Spec, available: dict[str, float]) -> int:
    """How many trials run at once: the spec's cap, the trial count and the resources."""
    n = min(spec.max_concurrent, spec.plan.trials)
    res = spec.resources
    n = min(n, int(available.get("CPU", 1) // (res.cpu * res.workers)))
    if res.gpu > 0:
        n = min(n, int(available.get("GPU", 0) // (res.gpu * res.workers)))
    return max(n, 1)


def dry_run(spec: Spec, out=print) -> int:
    """Print the sweep's trials and resources; returns how many trials run at once."""
    available = local_resources() if not os.environ.get("RAY_ADDRESS") else None
    plan = spec.plan
    out(
        f"spec {spec.path} (sha256 {spec.sha256[:12]}): experiment {spec.name!r}, "
        f"{plan.trials} trials, objective {spec.metric} ({spec.mode})"
    )
    if plan.algorithm == "grid":
        rows = [[i, *pt.values()] for i, pt in enumerate(grid_points(plan.params))]
        out(tabulate(rows, headers=["trial", *short_names(list(plan.params)).values()]))
    else:
        sampler = f" / {plan.sampler}" if plan.sampler else ""
        out(f"{plan.algorithm}{sampler} search, seed {plan.seed}, over:")
        for p, d in plan.params.items():
            out(f"  {p}: {d}")
    res = spec.resources
    per = f"{res.cpu:g} CPU" + (f", {res.gpu:g} GPU" if res.gpu else "")
    if res.workers > 1:
        per = f"{res.workers} data-parallel workers x ({per})"
    if available:
        have = f"{available['CPU']:g} CPUs, {available['GPU']:g} GPUs on this machine"
        slots = concurrency(spec, available)
        out(
            f"resources: {per} per trial; {have}; {slots} at a time "
            f"(max_concurrent {spec.max_concurrent})"
        )
    else:
        slots = spec.max_concurrent
        out(
            f"resources: {per} per trial on the Ray cluster at $RAY_ADDRESS; "
            f"at most {slots} at a time"
        )
    out(f"storage: {spec.storage}/{spec.name}   tracking: {describe_store(spec.tracking_uri)}")
    if spec.seeds.adaptive is not None:
        for line in adaptive_plan(spec):
            out(line)
    return slots


def adaptive_plan(spec: Spec) -> list[str]:
    """What an adaptive-seeds sweep may cost, at least and at most, and what it can decide."""
    from nlsweep.report import sequential as sq

    plan = spec.seeds.adaptive
    configs = spec.plan.trials // len(spec.space["train.seed"].values)
    rows = configs - 1
    power = {e: sq.simulated_power(plan, rows, e, sims=4000) for e in (1.0, 1.5, 2.0)}
    claims = ", ".join(f"{e:g} sd: {p:.2f}" for e, (p, _, _) in power.items())
    return [
        f"adaptive seeds: {configs} configurations x {plan.min} to {plan.max} seeds (rounds "
        f"of {plan.batch}: {', '.join(map(str, sq.looks(plan)))}): at least "
        f"{configs * plan.min} trials (the first round, above), at most {configs * plan.max}",
        f"  power to call a row different from the baseline (Holm across {rows}, alpha "
        f"{plan.alpha:g}; simulated, paired differences normal, in their standard deviations):"
        f" {claims}; mean trials at 1.5 sd: {power[1.5][1]:.0f}; a row needs at least "
        f"{sq.fewest_to_decide(plan, rows)} seeds to be called different",
    ]


def print_cost(spec: Spec, slots: int, probe_step_s: float | None = None, out=print) -> None:
    """The sweep's expected wall time and trial-hours at `slots` trials at a time
    (`nlsweep.execution.forecast`): from earlier finished trials of the same sizes in the tracking
    store, else from the probe."""
    from nlsweep.execution.forecast import cost_lines

    cost, where = estimate_cost(spec, slots, probe_step_s, out)
    for line in cost_lines(cost, slots, where, probe_step_s is not None):
        out(line)


def estimate_cost(spec: Spec, slots: int, probe_step_s: float | None = None, out=print):
    """(`forecast.Cost`, the store it was read from) of the sweep at `slots` at a time."""
    from nlsweep.execution.forecast import step_times, sweep_cost

    plan, uri = spec.plan, spec.tracking_uri
    if plan.algorithm == "grid":
        cfgs = [spec.trial_config(dict(pt)) for pt in grid_points(plan.params)]
    else:  # sampled sizes: each trial counted at the largest the space allows (a bound)
        from nlsweep.execution.probe import largest_trial

        cfgs = [largest_trial(spec)[1]] * plan.trials
    trials = [(flatten(to_dict(c)), c.train.steps) for c in cfgs]
    history, where = {}, describe_store(uri)
    absent = uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).exists()
    if not absent:  # (a SQLite store that does not exist yet has no history: not created)
        try:
            history = step_times(Tracker(uri).trial_timings())
        except Exception as e:  # noqa: BLE001 - an estimate must not stop a dry run
            out(f"cost: earlier runs unreadable in {where} ({type(e).__name__}); none used")
    return sweep_cost(trials, history, probe_step_s, slots), where


def record_forecast(tracker: Tracker, parent_id: str, spec: Spec, slots: int) -> None:
    """The `--dry-run` cost forecast, made as the sweep starts (from earlier finished trials
    of the same sizes only), as parent-run tags the report sets beside the actual time."""
    try:
        cost, _ = estimate_cost(spec, slots, None, out=lambda _: None)
    except Exception:  # noqa: BLE001 - a forecast never stops the sweep it forecasts
        return
    from nlsweep.config.units import duration

    if cost.trial_s:
        tracker.tags_batch(
            parent_id,
            {
                TAG_FORECAST_S: f"{cost.wall_s:.1f}",
                TAG_FORECAST: f"{duration(cost.wall_s)} of wall time at {slots} at a time, "
                f"from earlier trials of the same sizes for {cost.from_history} of "
                f"{cost.from_history + cost.missing} trials",
            },
        )


def record_tokenizers(tracker: Tracker, parent_id: str, models: dict[str, bytes], path: str,
                      out=print) -> None:  # fmt: skip
    """The subword models the trials read, as artifacts `tokenizer/*.model` of the parent
    run; where the store takes no artifacts, as files in the Ray experiment's `tokenizer/`."""
    if not models:
        return
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for name, blob in models.items():
            (Path(tmp) / name).write_bytes(blob)
        try:
            tracker.log_artifacts(parent_id, tmp, "tokenizer")
            return
        except Exception as e:  # noqa: BLE001 - the models are kept beside the experiment
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    try:
        fs, root = filesystem(path)
        fs.create_dir(f"{root}/tokenizer", recursive=True)
        for name, blob in models.items():
            with fs.open_output_stream(f"{root}/tokenizer/{name}") as f:
                f.write(blob)
    except Exception as e:  # noqa: BLE001 - trials read the cache; say what was not kept
        where = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        out(f"warning: the tokenizer models were not recorded (MLflow took no artifact: "
            f"{why}; {path}/tokenizer/: {where})")  # fmt: skip
        return
    out(f"warning: the tokenizer models went to {path}/tokenizer/ (MLflow took no artifact: {why})")


def print_summary(spec: Spec, rows, best, failed: int, parent_id: str, out=print) -> None:
    out("")
    # metrics to 4 decimals; swept values as they were given (1e-06 is not 0.0000)
    params = set(short_names(list(spec.space)).values())
    shown = [{k: (f"{v:g}" if k in params and isinstance(v, float) else v)
              for k, v in r.items()} for r in rows]  # fmt: skip
    keys = list(shown[0]) if shown else []
    raw = [i for i, k in enumerate(keys) if k in params]  # tabulate must not reparse them
    out(tabulate(shown, headers="keys", floatfmt=".4f", disable_numparse=raw or False))
    if best is not None:
        out(
            f"best trial: {best['trial']} ({best['label']}) {spec.metric} = {best[spec.metric]:.4f}"
        )
    else:
        out("best trial: none (no trial reported a result)")
    store = describe_store(spec.tracking_uri)
    out(f"MLflow: experiment {spec.name!r} in {store}, parent run {parent_id}")
    out(f"to compare trials: {ui_command(spec.tracking_uri)}")
    try:
        tracker = Tracker(spec.tracking_uri)
        kids = tracker.children(parent_id).values()
        scored = [r.info.run_id for r in kids if spec.metric in r.data.metrics]
        exp = tracker.experiment_of(parent_id)
        runs, charts, compare = ui_links(spec.tracking_uri, exp, scored)
        out(f"  runs, best {spec.metric} first: {runs}")
        out(f"  charts, {spec.metric} first: {charts}")
        # MLflow's compare page plots only metrics every run it shows has
        out(f"  compare the {len(scored)} trial runs that reported {spec.metric}: {compare}")
    except Exception as e:  # noqa: BLE001 - links are a convenience; the sweep has ended
        out(f"  (no links: {type(e).__name__})")
    out(f"Ray experiment folder: {spec.storage}/{spec.name}")
    if failed:
        out(f"{failed} trial(s) failed; their MLflow runs carry the error in tag {TAG_ERROR}")
    diverged = sum(r["status"] == "DIVERGED" for r in rows)
    if diverged:
        out(f"{diverged} trial(s) diverged and stopped; tag {TAG_DIVERGED} says at which step")


def summarize(spec: Spec, *rounds) -> tuple[list[dict], dict | None, int]:
    """Rows for the summary table (one per trial of each round's results, round by round),
    the best finished row, the failure count."""
    names = short_names(list(spec.space))
    rows, failed = [], 0
    for i, r in ((i, r) for i, results in enumerate(rounds) for r in results):
        m = r.metrics or {}
        values = swept_values(spec, r.config or {})
        final_step = m.get("step")
        if r.error is not None:
            status, failed = "FAILED", failed + 1
        elif DIVERGED in m:
            status = "DIVERGED"  # a result of the experiment, not a failure of the harness
        elif final_step is not None and final_step < spec.trial_config(values).train.steps:
            status = "STOPPED"  # early-stopped by the scheduler
        else:
            status = "FINISHED"
        row = {"trial": m.get("trial_id", Path(r.path).name if r.path else "?")}
        row.update({names[p]: v for p, v in values.items()})
        row[spec.metric] = m.get(spec.metric, float("nan"))
        tps = m.get("perf/tokens_per_s")
        row["tokens/s"] = round(tps) if tps is not None and math.isfinite(tps) else None
        row["status"] = status
        row["label"] = trial_label(values)
        rows.append((i, row))
    # creation order, also after a resume (a round's trial ids share a prefix of their own)
    rows = [row for _, row in sorted(rows, key=lambda x: (x[0], str(x[1]["trial"])))]
    done = [
        r for r in rows if r["status"] in ("FINISHED", "STOPPED") and math.isfinite(r[spec.metric])
    ]
    pick = min if spec.mode == "min" else max
    best = pick(done, key=lambda r: r[spec.metric]) if done else None
    table = [{k: v for k, v in r.items() if k != "label"} for r in rows]
    return table, best, failed


def tally(spec: Spec, results, planned: int) -> str:
    """An interrupted sweep's trials by what became of them: finished (every step), failed,
    stopped short (by the signal, or early by the scheduler) and not started."""
    finished = failed = short = 0
    for r in results:
        m = r.metrics or {}
        if r.error is not None:
            failed += 1
        elif (
            DIVERGED in m
            or m.get("step", 0) >= spec.trial_config(swept_values(spec, r.config or {})).train.steps
        ):
            finished += 1
        else:
            short += 1
    pending = max(planned - len(results), 0)
    return (f"{finished} finished, {failed} failed, {short} stopped short, {pending} not "
            f"started, of {planned} trials")  # fmt: skip
