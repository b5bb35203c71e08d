"""Power of a fixed design: the smallest difference a comparison with the baseline could
detect, and the seeds a difference of interest needs.

For a row compared with the baseline on n seeds at level a (two-sided), with spread s:
    paired      t = mean(d) / (s_d / sqrt(n)), df = n - 1, s_d the std of the per-seed
                differences; under a true difference D, t is noncentral t with
                ncp = D sqrt(n) / s_d
    unpaired    Welch's t, ncp = D / sqrt(s_1^2 / n_1 + s_2^2 / n_2), df by Welch-Satterthwaite
    power(D)    P(|T| > t_{1-a/2, df}) under that noncentral t (scipy.stats.nct)
    MDE         the D with power(D) = 80% (or the spec's `report.power`), found by brentq
The spread is itself an estimate from n seeds: its 95% interval, s sqrt((n-1) / chi2_{df}
quantiles), turns the seeds needed for a difference of interest into a range, which the
report states beside the point value rather than hiding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import integrate, optimize, stats

MAX_SEEDS = 10_000
"""Seeds needed beyond this are reported as 'more than'."""


def power(delta: float, se: float, df: float, alpha: float) -> float:
    """Power of the two-sided t-test at level `alpha` for a true difference `delta`, when
    the estimate's standard error is `se` with `df` degrees of freedom."""
    if se <= 0 or df < 1:
        return math.nan
    crit = stats.t.ppf(1 - alpha / 2, df)
    ncp = delta / se
    if abs(ncp) > crit + 12:  # scipy's nct loses its tail there (NaN); the power is 1
        return 1.0
    value = stats.nct.sf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp)
    if math.isfinite(value):
        return float(value)

    # scipy's nct is NaN in parts of its far tails: the same probability as an integral over
    # the chi-square of the variance estimate, T = (Z + ncp) / sqrt(V / df)
    def tails(v: float) -> float:
        scale = crit * math.sqrt(v / df)
        return (stats.norm.sf(scale - ncp) + stats.norm.cdf(-scale - ncp)) * stats.chi2.pdf(v, df)

    return float(integrate.quad(tails, 0, math.inf, limit=200)[0])


def _solve(se: float, df: float, alpha: float, target: float) -> float:
    """The difference whose power is `target`."""
    if not (se > 0 and math.isfinite(se) and df >= 1):
        return math.nan
    hi = se
    while power(hi, se, df, alpha) < target:
        hi *= 2
    return float(optimize.brentq(lambda x: power(x, se, df, alpha) - target, 0.0, hi))


@dataclass(frozen=True)
class Detectable:
    """What one comparison could detect."""

    mde: float
    """Minimum detectable difference (objective units) at the target power; NaN when the
    spread cannot be estimated (fewer than 2 seeds on a side)."""
    alpha: float
    """The level the row is tested at."""
    sd: float
    """The spread the test sees: of the per-seed differences (paired) or pooled."""


def detectable(row: dict, base: dict, alpha: float, target: float = 0.8) -> Detectable:
    """The minimum detectable difference of a row ({seed: value}) against the baseline's, with
    the same pairing rule as `stats.compare`."""
    if set(row) == set(base) and len(row) >= 2:
        seeds = sorted(row)
        d = np.array([row[s] - base[s] for s in seeds], dtype=float)
        n = len(d)
        sd = float(d.std(ddof=1))
        return Detectable(_solve(sd / math.sqrt(n), n - 1, alpha, target), alpha, sd)
    a = np.array(list(row.values()), dtype=float)
    b = np.array(list(base.values()), dtype=float)
    if len(a) < 2 or len(b) < 2:
        return Detectable(math.nan, alpha, math.nan)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Detectable(math.nan, alpha, 0.0)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    sd = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    return Detectable(_solve(se, df, alpha, target), alpha, sd)


def seeds_for(delta: float, sd: float, alpha: float, target: float, paired: bool) -> int | None:
    """The fewest seeds per configuration (>= 2) at which a fixed design detects `delta` with
    power `target`, for a spread `sd` (of differences when paired, of each side if not);
    None beyond MAX_SEEDS."""
    if sd == 0:
        return 2
    if not (sd > 0 and math.isfinite(sd)):
        return None

    def ok(n: int) -> bool:
        if paired:
            return power(delta, sd / math.sqrt(n), n - 1, alpha) >= target
        return power(delta, sd * math.sqrt(2 / n), 2 * n - 2, alpha) >= target

    hi = 2
    while not ok(hi):  # doubling first: no test at sizes far past the answer
        if hi >= MAX_SEEDS:
            return None
        hi = min(2 * hi, MAX_SEEDS)
    lo = max(2, hi // 2)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
    return lo


@dataclass(frozen=True)
class SeedsNeeded:
    """Seeds a fixed design needs for a difference of interest, at the spread observed and at
    the ends of that spread's 95% interval (None: more than MAX_SEEDS)."""

    point: int | None
    low: int | None
    high: int | None


def seeds_needed(
    delta: float, sd: float, n: int, alpha: float, target: float, paired: bool
) -> SeedsNeeded | None:
    """`seeds_for` at the spread `sd` estimated from `n` seeds, and at its 95% interval."""
    if n < 2 or not math.isfinite(sd):
        return None
    df = n - 1
    sd_lo = sd * math.sqrt(df / stats.chi2.ppf(0.975, df))
    sd_hi = sd * math.sqrt(df / stats.chi2.ppf(0.025, df))
    return SeedsNeeded(
        seeds_for(delta, sd, alpha, target, paired),
        seeds_for(delta, sd_lo, alpha, target, paired),
        seeds_for(delta, sd_hi, alpha, target, paired),
    )


def holm_levels(pvalues: list[float | None], alpha: float) -> list[float]:
    """The level Holm's step-down tests each p-value at: alpha/m for the smallest, ...,
    alpha for the largest (rows without a p-value get alpha/m, the strictest)."""
    idx = [i for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    m = max(len(pvalues), 1)
    levels = [alpha / m] * len(pvalues)
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        levels[i] = alpha / (len(idx) - rank)
    return levels
