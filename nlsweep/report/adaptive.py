"""A sweep with adaptive seeds, read from MLflow: where each row stands in the sequential rule
(`sequential.py`), and the trials the next round runs.

Everything is derived from the trial runs the store holds, so the sweep runner and the report
compute the same state, and a sweep killed anywhere, within a round or while the next one is
made (docs/seeds.md), resumes to the same rounds: a seed counts as run once a trial of it
FINISHED or FAILED (a failed seed's difference is unknown and bets nothing); any other trial
is run again.
Seeds go in one order for every configuration: the `train.seed` grid of the first round, then
the integers after its largest (`config.seeds.seed_sequence`). A row is compared on the seeds
it and the baseline have both run, from the first, in whole rounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nlsweep.config.seeds import AdaptiveSeeds, seed_sequence
from nlsweep.report import sequential as sq
from nlsweep.report.results import SEED, Context, Row, build_rows, read_context, read_trial
from nlsweep.tracking.read import SweepData, read_sweep

RAN = ("FINISHED", "FAILED")


def plan_of(ctx: Context) -> AdaptiveSeeds | None:
    """The sweep's adaptive-seeds settings, from its parent run's params (None: fixed seeds)."""
    params = ctx.sweep.parent.params
    if "seeds.adaptive.min" not in params:
        return None
    return AdaptiveSeeds(
        min=int(params["seeds.adaptive.min"]),
        max=int(params["seeds.adaptive.max"]),
        batch=int(params["seeds.adaptive.batch"]),
        alpha=float(params["seeds.adaptive.alpha"]),
    )


@dataclass
class RowState:
    row: Row
    n: int
    """Seeds it is compared on (a whole number of rounds)."""
    k: float
    p: float
    """Anytime-valid p-value; Holm across the rows decides."""
    state: str
    target: int
    """Seeds it will have run after the next round."""


@dataclass
class Progress:
    plan: AdaptiveSeeds
    seeds: list[int]
    """The seed order, `plan.max` long."""
    rows: list[RowState]
    baseline: Row | None
    points: list[dict[str, Any]] = field(default_factory=list)
    """The trials (factor -> value, seed included) the next round runs; [] when done."""

    @property
    def spent(self) -> dict[str, int]:
        """Seeds each configuration has run (the baseline under its label too)."""
        rows = [r.row for r in self.rows] + ([self.baseline] if self.baseline else [])
        return {r.label: len(_ran(r, self.seeds)) for r in rows}

    @property
    def done(self) -> bool:
        return not self.points


def _ran(row: Row, seeds: list[int]) -> dict[int, float]:
    """Seed -> final value (NaN: failed) of the seeds of the order that `row` has run."""
    out: dict[int, float] = {}
    for t in row.trials:
        if t.seed in seeds and t.run.status in RAN:
            value = t.final if t.final is not None else math.nan
            out[t.seed] = value if t.seed not in out or math.isnan(out[t.seed]) else out[t.seed]
    return out


def progress(rows: list[Row], seeds_prefix: list[int], factors: list[str],
             plan: AdaptiveSeeds) -> Progress:  # fmt: skip
    """Where every row stands and the next round's trials, from the sweep's rows."""
    order = seed_sequence(seeds_prefix, plan.max)
    looks = sq.looks(plan)
    base = next((r for r in rows if r.is_baseline), None)
    others = [r for r in rows if not r.is_baseline]
    ran = {id(r): _ran(r, order) for r in rows}
    base_ran = ran[id(base)] if base else {}
    d = np.full((len(others), plan.max), np.nan)
    counts = []
    for j, r in enumerate(others):
        mine, count = ran[id(r)], 0
        for i, s in enumerate(order):
            if s not in mine or s not in base_ran:
                break
            d[j, i], count = mine[s] - base_ran[s], count + 1
        counts.append(count)
    n = np.array([max([x for x in looks if x <= c], default=0) for c in counts], dtype=int)
    dec = sq.decide(sq.wealth(d), n, plan)
    states = []
    for j, r in enumerate(others):
        state = str(dec.state[j]) if n[j] >= plan.min else sq.RUNNING
        target = int(n[j]) if state != sq.RUNNING else min(x for x in looks if x > n[j])
        states.append(RowState(r, int(n[j]), float(dec.k[j]), float(dec.p[j]), state, target))
    prog = Progress(plan, order, states, base)
    if base is None:
        return prog
    wanted = [(s.row, s.target) for s in states]
    wanted.append((base, max([s.target for s in states], default=plan.min)))
    for row, target in wanted:
        for seed in order[:target]:
            if seed not in ran[id(row)]:
                prog.points.append({**{f: row.factors[f] for f in factors}, SEED: seed})
    return prog


def progress_of(rows: list[Row], ctx: Context) -> Progress | None:
    """The progress of the sweep's adaptive seeds (None: its seeds are fixed)."""
    plan = plan_of(ctx)
    if plan is None:
        return None
    prefix = list(ctx.space.get(SEED, {}).get("grid", []))
    return progress(rows, prefix, ctx.factors, plan)


def read_progress(sweep: SweepData) -> Progress | None:
    """`progress_of` the sweep as the store holds it."""
    ctx = read_context(sweep)
    return progress_of(build_rows([read_trial(r, ctx) for r in sweep.trials], ctx), ctx)


def next_round(uri: str, experiment: str, parent_run_id: str) -> Progress | None:
    """The sweep runner's question after each round: what runs next (from the store)."""
    return read_progress(read_sweep(uri, experiment, parent_run_id))


def round_line(prog: Progress) -> str:
    """One line on where the rounds stand, for the runner's output."""
    by_state: dict[str, list[str]] = {}
    for s in prog.rows:
        by_state.setdefault(s.state or "undecided yet", []).append(f"{s.row.label} (n={s.n})")
    parts = [f"{k}: {', '.join(v)}" for k, v in by_state.items()]
    return "adaptive seeds: " + "; ".join(parts)
