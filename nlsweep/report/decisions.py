"""What the report says about its comparisons' decisions: which are decided and which are
under-powered (every grid report), the seeds a difference of interest needs, and, for a sweep
with adaptive seeds, where the sequential rule stopped each row and what it spent against a
fixed design of the same power."""

from __future__ import annotations

import math

import numpy as np

from nlsweep.report import sequential as sq
from nlsweep.report.adaptive import Progress
from nlsweep.report.power import seeds_for, seeds_needed
from nlsweep.report.results import Context, Row
from nlsweep.report.stats import LEVEL

REFERENCE_EFFECT = 1.5
"""The standardized difference (in paired-difference standard deviations) at which an
adaptive design's cost is compared with a fixed design's when the spec sets no
`report.effect_of_interest`."""


def _n(x: int | None) -> str:
    return "more than 10000" if x is None else str(x)


def _f(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else "n/a"


def power_paragraph(rows: list[Row], ctx: Context, adaptive: bool = False) -> list[str]:
    """Under the main table: the decided comparisons, the under-powered ones, and (with
    `report.effect_of_interest`) the seeds a fixed design needs to detect it. With adaptive
    seeds these are the fixed-n tests' verdicts, and the paragraph says where the sequential
    rule's decisions are."""
    compared = [(i, r) for i, r in enumerate(rows, 1) if not r.is_baseline and r.comparison]
    if not compared:
        return []
    alpha, eoi = 1 - LEVEL, ctx.effect_of_interest
    decided = [f"R{i} `{r.label}`" for i, r in compared if (r.p_holm or 1.0) < alpha]
    weak, powered = [], []
    for i, r in compared:
        if (r.p_holm or 1.0) < alpha or r.detect is None:
            continue
        mde = r.detect.mde
        bar = eoi if eoi is not None else abs(r.comparison.diff)
        item = f"R{i} (MDE {_f(mde)} vs {'the effect of interest' if eoi else '|Δ|'} {_f(bar)})"
        (weak if not (mde <= bar) else powered).append(item)
    out = ["", f"**Decided and under-powered** (level {alpha:g}, Holm; power {ctx.power:.0%}). "]
    text = [
        f"Decided: {', '.join(decided)} {'differs' if len(decided) == 1 else 'differ'} from "
        "the baseline."
        if decided
        else "No comparison is decided: no row differs from the baseline at this level."
    ]
    if weak:
        text.append(f"Under-powered: {', '.join(weak)}: a real difference of that size would "
                    "be missed more often than not with these seeds, so 'not distinguishable' "
                    "says little about them.")  # fmt: skip
    if powered:
        text.append(f"Powered but undecided: {', '.join(powered)}: these seeds would likely "
                    "have detected a difference of that size, and found none.")  # fmt: skip
    if adaptive:
        text.append(
            "These are fixed-n t-tests, which ignore how the seeds were added; this sweep's "
            "decisions are the sequential rule's, under 'Adaptive seeds'."
        )
    out[-1] += " ".join(text)
    if eoi is not None:
        out += ["", f"Seeds per configuration a fixed design needs to detect Δ = {eoi:g} with "
                f"{ctx.power:.0%} power at the row's Holm level, at the spread observed "
                "(and at the ends of that spread's 95% interval, which few seeds leave wide):",
                ""]  # fmt: skip
        for i, r in compared:
            d, c = r.detect, r.comparison
            need = seeds_needed(eoi, d.sd, c.n, d.alpha, ctx.power, c.paired) if d else None
            if need is None:
                out.append(f"- R{i} `{r.label}`: n/a (fewer than 2 seeds)")
                continue
            out.append(f"- R{i} `{r.label}`: {_n(need.point)} (range {_n(need.low)} to "
                       f"{_n(need.high)}; spread {_f(d.sd)} from {c.n} seeds)")  # fmt: skip
    return out


def seeds_row(prog: Progress, ctx: Context) -> list[str]:
    """The header's `seeds` row of an adaptive sweep: what it spent, per row and in total,
    beside a fixed design of the same power."""
    spent = prog.spent
    total = sum(spent.values())
    per = ", ".join(f"{label} {n}" for label, n in spent.items())
    fixed = fixed_design(prog, ctx)
    return [
        "seeds",
        f"adaptive, {prog.plan.min} to {prog.plan.max} per configuration "
        f"(rounds of {prog.plan.batch}, α {prog.plan.alpha:g}): {total} trials spent ({per}); "
        f"{fixed}",
    ]


def fixed_design(prog: Progress, ctx: Context) -> str:
    """What a fixed number of seeds per configuration would spend for the power the
    adaptive design has at the reference difference."""
    m = max(len(prog.rows), 1)
    effect, where = _reference_effect(prog, ctx)
    power, mean_cost, _ = sq.simulated_power(prog.plan, m, effect)
    n = seeds_for(effect, 1.0, prog.plan.alpha / m, power, paired=True)
    if n is None:
        return f"a fixed design of the same power at {where} needs more than 10000 per row"
    return (f"the design's power at {where} is {power:.2f} (mean cost {mean_cost:.0f} trials, "
            f"simulated); a fixed paired t-test with that power there at "
            f"Holm's strictest level α/{m} needs {n} seeds per configuration, "
            f"{n * (m + 1)} trials")  # fmt: skip


def _reference_effect(prog: Progress, ctx: Context) -> tuple[float, str]:
    """The standardized difference of interest, and how the report names it."""
    if ctx.effect_of_interest is not None:
        sds = [s.row.detect.sd for s in prog.rows if s.row.detect and s.row.detect.sd > 0]
        sd = float(np.sqrt(np.mean(np.square(sds)))) if sds else math.nan
        if math.isfinite(sd):
            return ctx.effect_of_interest / sd, (
                f"Δ = {ctx.effect_of_interest:g} ({ctx.effect_of_interest / sd:.2f} paired "
                f"standard deviations of {sd:.3g})"
            )
    return REFERENCE_EFFECT, f"Δ = {REFERENCE_EFFECT:g} paired standard deviations"


def sequential_section(prog: Progress, rows: list[Row]) -> list[str]:
    """Where the sequential rule left every row."""
    index = {id(r): i for i, r in enumerate(rows, 1)}
    plan = prog.plan
    words = {
        sq.DIFFERENT: "decided: differs from the baseline",
        sq.NOT_DETECTABLE: f"decided: no difference it could still detect by {plan.max} seeds",
        sq.UNDECIDED: f"undecided at the maximum, {plan.max} seeds",
        sq.RUNNING: "still taking seeds (the sweep was stopped between rounds)",
    }
    out = [
        "",
        "## Adaptive seeds",
        "",
        f"Seeds were added in rounds ({', '.join(map(str, sq.looks(plan)))} per "
        "configuration) only to the rows whose comparison with the baseline was undecided. "
        "The rule is anytime-valid: each row's wealth K from betting on the signs of its "
        "paired differences, p = 1/max K, Holm across the rows at family-wise α "
        f"{plan.alpha:g}; valid whatever the metric's distribution, as long as a row equal to "
        "the baseline gives differences symmetric about 0 (docs/seeds.md). A row needs at "
        f"least {sq.fewest_to_decide(plan, max(len(prog.rows), 1))} seeds to be called "
        "different here. The main table's t-test p-values ignore the stopping rule; this "
        "table's decisions do not.",
        "",
        "| row | seeds compared | K | anytime p | decision |",
        "|---|---|---|---|---|",
    ]
    for s in prog.rows:
        i = index.get(id(s.row), "?")
        out.append(f"| R{i} `{s.row.label}` | {s.n} | {s.k:.3g} | {s.p:.3g} | "
                   f"{words[s.state]} |")  # fmt: skip
    return out
