"""A sweep's results as read from MLflow: trials, and rows of configurations with statistics.

Reports are built from this alone (never from in-memory objects of a running sweep), so a
report can be regenerated any time from the tracking store.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import pandas as pd
import yaml

from nlsweep.config.builder import as_number
from nlsweep.config.space import trial_label
from nlsweep.report.power import Detectable, detectable, holm_levels
from nlsweep.report.stats import LEVEL, Comparison, Summary, compare, holm, summarize
from nlsweep.tracking.read import RunData, SweepData
from nlsweep.tracking.tags import TAG_BASELINE, TAG_SPACE, TAG_STOPPED, TAG_TRIAL

SEED = "train.seed"


def _parse(text: str) -> Any:
    """A logged param string back to its value ('8' -> 8, 'adam' -> 'adam')."""
    try:
        return as_number(yaml.safe_load(text))
    except yaml.YAMLError:
        return text


@dataclass
class Trial:
    run: RunData
    factors: dict[str, Any]
    seed: Any
    final: float | None
    """Last held-out value of the objective; None unless the run finished with one."""
    best: float | None
    """Best value of the objective over the run's evaluations."""


@dataclass
class Row:
    factors: dict[str, Any]
    trials: list[Trial]
    summary: Summary
    best: Summary
    comparison: Comparison | None = None
    p_holm: float | None = None
    is_baseline: bool = False
    tokens_per_s: float = math.nan
    wall_s: float = math.nan
    detect: Detectable | None = None
    """What the comparison with the baseline could detect (its MDE at the report's power)."""

    @property
    def label(self) -> str:
        return trial_label(self.factors)

    @property
    def by_seed(self) -> dict:
        return {t.seed: t.final for t in self.trials if t.final is not None}


@dataclass
class Context:
    sweep: SweepData
    name: str
    metric: str
    mode: str
    algorithm: str
    factors: list[str]
    baseline: dict[str, Any]
    space: dict[str, dict]
    """Swept path -> its distribution in spec form, e.g. {'grid': [2, 8]}."""
    effect_of_interest: float | None = None
    """The spec's `report.effect_of_interest` (objective units), if it set one."""
    power: float = 0.8
    """The power minimum detectable effects and seeds needed are computed at."""


def read_context(sweep: SweepData) -> Context:
    p = sweep.parent
    space = json.loads(p.tags.get(TAG_SPACE, "{}"))
    return Context(
        sweep=sweep,
        name=sweep.experiment,
        metric=p.params.get("metric", "val/bpc"),
        mode=p.params.get("mode", "min"),
        algorithm=p.params.get("search.algorithm", "grid"),
        factors=[f for f in space if f != SEED],
        baseline=json.loads(p.tags.get(TAG_BASELINE, "{}")),
        space=space,
        effect_of_interest=_number(p.params.get("report.effect_of_interest")),
        power=_number(p.params.get("report.power")) or 0.8,
    )


def _number(text: str | None) -> float | None:
    value = _parse(text) if text is not None else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def read_trial(run: RunData, ctx: Context) -> Trial:
    hist = [v for _, v in run.history.get(ctx.metric, []) if math.isfinite(v)]
    final = run.metrics.get(ctx.metric)
    ok = run.status == "FINISHED" and final is not None and math.isfinite(final)
    pick = min if ctx.mode == "min" else max
    return Trial(
        run=run,
        factors={f: _parse(run.params[f]) for f in ctx.factors if f in run.params},
        seed=_parse(run.params.get(SEED, "None")),
        final=final if ok else None,
        best=pick(hist) if ok and hist else None,
    )


def trials_frame(trials: list[Trial], ctx: Context) -> pd.DataFrame:
    """One row per trial run, in start order (index = position in `trials`): its swept values,
    seed, final and best objective, speed, status, whether a scheduler stopped it, its last
    logged step, run id, and `config` (the swept values as one JSON key, for grouping)."""
    records = []
    for t in trials:
        hist = t.run.history.get(ctx.metric, [])
        records.append(
            {
                **{f: t.factors.get(f) for f in ctx.factors},
                "seed": t.seed,
                "final": t.final,
                "best": t.best,
                "tokens_per_s": t.run.metrics.get("perf/tokens_per_s"),
                "wall_s": t.run.metrics.get("perf/elapsed_s"),
                "status": t.run.status,
                "stopped": TAG_STOPPED in t.run.tags,
                "last_step": hist[-1][0] if hist else 0,
                "run_id": t.run.run_id,
                "config": json.dumps([t.factors.get(f) for f in ctx.factors]),
            }
        )
    columns = [*ctx.factors, "seed", "final", "best", "tokens_per_s", "wall_s", "status",
               "stopped", "last_step", "run_id", "config"]  # fmt: skip
    frame = pd.DataFrame.from_records(records, columns=columns)
    for col in ("final", "best", "tokens_per_s", "wall_s"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return frame


def trial_table(sweep: SweepData) -> pd.DataFrame:
    """Every trial of a sweep, one row each: its Tune trial id, `trials_frame`'s columns
    (swept values by their full keys, seed,
    the objective's final and best, status, run id, ...), then the final value of every
    metric the trial logged (`val/bpc`, `val/loss`, ...), one column per metric key."""
    ctx = read_context(sweep)
    trials = [read_trial(r, ctx) for r in sweep.trials]
    frame = trials_frame(trials, ctx).drop(columns="config")
    frame.insert(0, "trial", [t.run.tags.get(TAG_TRIAL) for t in trials])
    keys = sorted({k for t in trials for k in t.run.metrics})
    finals = pd.DataFrame(
        [[t.run.metrics.get(k) for k in keys] for t in trials], columns=keys, dtype="float64"
    )
    return pd.concat([frame, finals], axis=1)


def build_rows(trials: list[Trial], ctx: Context) -> list[Row]:
    """One row per configuration (seeds pooled), compared with the baseline row.

    A run killed between its creation and its first parameters names no configuration:
    it belongs to no row (the sanity section still lists it as not finished), and a resumed
    adaptive sweep runs its trial again."""
    trials = [t for t in trials if all(f in t.factors for f in ctx.factors)]
    frame = trials_frame(trials, ctx)
    rows = []
    for _, g in frame.groupby("config", sort=False):
        members = sorted(
            (trials[i] for i in g.index),
            key=lambda t: (not isinstance(t.seed, int), t.seed if isinstance(t.seed, int) else 0),
        )
        done = g.dropna(subset=["final"])
        rows.append(
            Row(
                factors=dict(members[0].factors),
                trials=members,
                summary=summarize(done["final"]),
                best=summarize(done["best"].dropna()),
                is_baseline=members[0].factors == ctx.baseline,
                tokens_per_s=_mean(done["tokens_per_s"]),
                wall_s=_mean(done["wall_s"]),
            )
        )
    rows.sort(key=lambda r: (not r.is_baseline, _grid_position(r.factors, ctx)))
    base = next((r for r in rows if r.is_baseline), None)
    if base is not None:
        others = [r for r in rows if r is not base]
        for r in others:
            r.comparison = compare(r.by_seed, base.by_seed)
        raw = [r.comparison.p if r.comparison else None for r in others]
        levels = holm_levels(raw, 1 - LEVEL)
        for r, p, level in zip(others, holm(raw), levels):
            r.p_holm = p
            r.detect = detectable(r.by_seed, base.by_seed, level, ctx.power)
    return rows


def _grid_position(factors: dict, ctx: Context) -> list:
    """Where a configuration sits in the spec's grid (its values' order), for row order."""
    pos = []
    for f in ctx.factors:
        values = ctx.space.get(f, {}).get("grid", [])
        pos.append(values.index(factors.get(f)) if factors.get(f) in values else len(values))
    return pos


def _mean(values: pd.Series) -> float:
    """Mean of the finite values (NaN when none)."""
    xs = values[values.map(lambda v: v is not None and math.isfinite(v))]
    return float(xs.mean()) if len(xs) else math.nan
