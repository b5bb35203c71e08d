"""Statistics for ablation reports: per-configuration summaries and baseline comparisons.

Every test and interval comes from scipy.stats:
    summary      mean, sample std (ddof 1), 95% t-interval of the mean (n >= 2)
    paired       when a row and the baseline have the same seeds (n >= 2): the difference of
                 means with the t-interval of the per-seed differences, p from ttest_rel
    unpaired     otherwise (n >= 2 on both sides): Welch's t-test (ttest_ind, equal_var
                 False) and its interval for the difference of means
Holm's step-down adjustment controls the family-wise error across the rows compared with
the baseline; it is a few lines of arithmetic on the scipy p-values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float
    ci: tuple[float, float] | None
    """95% t-interval of the mean; None when n < 2."""


@dataclass(frozen=True)
class Comparison:
    diff: float
    """mean(row) - mean(baseline)."""
    ci: tuple[float, float] | None
    p: float | None
    paired: bool
    n: int
    """Pairs (paired) or the smaller group size (unpaired)."""

    @property
    def distinguishable(self) -> bool | None:
        """Whether the interval of the difference excludes 0 (None: no interval)."""
        if self.ci is None:
            return None
        return not (self.ci[0] <= 0.0 <= self.ci[1])


def summarize(values) -> Summary:
    x = np.asarray(list(values), dtype=float)
    n = len(x)
    if n == 0:
        return Summary(0, math.nan, math.nan, None)
    mean = float(x.mean())
    if n < 2:
        return Summary(1, mean, math.nan, None)
    std = float(x.std(ddof=1))
    if std == 0.0:
        return Summary(n, mean, 0.0, (mean, mean))
    lo, hi = stats.t.interval(LEVEL, n - 1, loc=mean, scale=stats.sem(x))
    return Summary(n, mean, std, (float(lo), float(hi)))


def compare(row: dict, base: dict) -> Comparison | None:
    """Compare {seed: value} of a row with the baseline's; None when nothing can be said."""
    if not row or not base:
        return None
    if set(row) == set(base) and len(row) >= 2:
        seeds = sorted(row)
        a = np.array([row[s] for s in seeds], dtype=float)
        b = np.array([base[s] for s in seeds], dtype=float)
        d = a - b
        if np.all(d == d[0]):
            # Identical differences: t is 0/0 or infinite and scipy returns NaN; the interval
            # is the point itself, and p is the t-test's limit (1 for no change, else 0).
            return Comparison(
                float(d[0]), (float(d[0]),) * 2, 1.0 if d[0] == 0 else 0.0, True, len(d)
            )
        res = stats.ttest_rel(a, b)
        ci = res.confidence_interval(LEVEL)
        return Comparison(
            float(d.mean()), (float(ci.low), float(ci.high)), float(res.pvalue), True, len(d)
        )
    a = np.array(list(row.values()), dtype=float)
    b = np.array(list(base.values()), dtype=float)
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2 or (a.std() == 0 and b.std() == 0):
        return Comparison(diff, None, None, False, min(len(a), len(b)))
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(LEVEL)
    return Comparison(
        diff, (float(ci.low), float(ci.high)), float(res.pvalue), False, min(len(a), len(b))
    )


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm-adjusted p-values (None entries are skipped and stay None)."""
    idx = [i for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    order = sorted(idx, key=lambda i: pvalues[i])
    m = len(order)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def same_to_digits(a: float, b: float, digits: int = 5) -> bool:
    """Equal to `digits` significant digits (how a factor that did nothing shows up).

    A relative tolerance rather than comparing rounded strings, which would call
    2.123451 and 2.123449 different (they round to 2.1235 and 2.1234).
    """
    if a == b:
        return True
    if not (math.isfinite(a) and math.isfinite(b)):
        return False
    return math.isclose(a, b, rel_tol=0.5 * 10.0 ** (1 - digits))
