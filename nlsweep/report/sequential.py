"""Sequential seeds: an anytime-valid test of each row against the baseline, so that seeds can
be added in rounds, and a row stopped as soon as it is decided, without inflating the
false-positive rate (the peeking problem of re-running a fixed-n t-test after each batch).

Notation (one row against the baseline; seeds in the order they are run):
    d_i      row(seed_i) - baseline(seed_i), the paired difference, i = 1..n
    s_i, w_i sign(d_i), and |d_i| / max(|d_i|, mean_{j<i} |d_j|) in [0, 1]: a seed as large as
             the earlier ones' mean size bets fully, a smaller one in proportion (w_1 = 1;
             0 when d_i = 0)
    l+_i     clip((1 + sum_{j<i} s_j w_j) / (1 + sum_{j<i} w_j^2), 0, C): the bet on d > 0, a
             Kelly plug-in from the earlier seeds only (the 1s are a prior pseudo-seed); l-_i
             the same for -d
    K+_n     prod_{i<=n} (1 + l+_i s_i w_i);  K-_n = prod_{i<=n} (1 - l-_i s_i w_i)
    K_n      (K+_n + K-_n) / 2, the wealth of betting both ways; K_0 = 1
    p_n      min(1, 1 / max_{m<=n} K_m), the anytime-valid p-value

The null hypothesis is that row and baseline are exchangeable given the seed (nothing the
row changes matters), so each d_i is symmetric about 0 and independent of the other seeds.
Then s_i is a fair coin independent of |d_i| and of the past, the bets use nothing else, so
K+, K- and K are nonnegative martingales with mean 1, and by Ville's inequality
P(exists n: K_n >= 1/a) <= a: p_n is a valid p-value at any stopping time, whatever rule
chose when to stop or how many seeds to add. No normality is assumed: heavy tails and a
bimodal "some seeds fail" metric keep the guarantee (tests/report/test_sequential.py
simulates both). This is testing by betting (Shafer and Vovk; Ramdas, Grunwald, Vovk and
Shafer 2023, "Game-theoretic statistics and safe anytime-valid inference", Statistical
Science 38(4)), on the sign-flip symmetry of paired differences; the plug-in bet follows
Waudby-Smith and Ramdas (2024, JRSS-B 86(1)).

Across rows, Holm's step-down on the p_n controls the family-wise error: a true null is
rejected at some round only if its p_n ever falls below a/m0, which by Ville and a union
bound has probability at most a. So rows may stop at different rounds.

A row is decided when Holm rejects it, or when even perfect seeds up to `max` cannot bring
its K to 1/a (each seed multiplies K by at most 1 + C): stopping it then changes no decision.
The price of the guarantee is the sign-flip test's own: with n seeds K cannot exceed
(1 + C)^n / 2, so a row needs at least log(2m/a) / log(1 + C) seeds to be decided as
different (6 for one row at a = 0.05, 8 for four).

Everything here is numpy on arrays with leading batch axes, so the sweep (one experiment)
and the simulations (tens of thousands) run the same code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nlsweep.config.seeds import AdaptiveSeeds

C = 0.9
"""The largest fraction of its wealth a bet stakes: one seed can at most multiply K by 1.9,
and a wrong-signed seed cannot take more than 90% of it. Chosen, with the weights w_i, for
power at 3 to 12 seeds under normal differences; the error guarantee holds for any value."""

DIFFERENT, NOT_DETECTABLE, UNDECIDED, RUNNING = "different", "not detectable", "undecided", ""
"""A row's state: Holm rejects it; it cannot reach 1/alpha by `max` seeds; it reached `max`
undecided; it still takes seeds."""


def wealth(d: np.ndarray) -> np.ndarray:
    """K_1..K_n along the last axis of the paired differences `d` (NaN: not run; it must
    only follow the seeds that ran)."""
    d = np.nan_to_num(np.asarray(d, dtype=float), nan=0.0)
    mag = np.abs(d)
    seen = np.arange(mag.shape[-1])
    past_mean = (np.cumsum(mag, axis=-1) - mag) / np.maximum(seen, 1)
    scale = np.maximum(mag, np.where(seen == 0, mag, past_mean))
    w = np.divide(mag, scale, out=np.zeros_like(mag), where=scale > 0)
    x = np.sign(d) * w
    past_x = np.cumsum(x, axis=-1) - x
    past_w2 = np.cumsum(w * w, axis=-1) - w * w
    up = np.clip((1.0 + past_x) / (1.0 + past_w2), 0.0, C)
    down = np.clip((1.0 - past_x) / (1.0 + past_w2), 0.0, C)
    k_up = np.cumprod(1.0 + up * x, axis=-1)
    k_down = np.cumprod(1.0 - down * x, axis=-1)
    return 0.5 * (k_up + k_down)


def p_values(k: np.ndarray) -> np.ndarray:
    """The anytime-valid p_n from the wealth path K_1..K_n (last axis)."""
    return np.minimum(1.0, 1.0 / np.maximum.accumulate(np.maximum(k, 1e-300), axis=-1))


def holm_reject(p: np.ndarray, alpha: float) -> np.ndarray:
    """Holm's step-down rejections along the last axis (rows), batched over leading axes."""
    p = np.asarray(p, dtype=float)
    m = p.shape[-1]
    order = np.argsort(p, axis=-1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=-1)
    passes = ranked <= alpha / (m - np.arange(m))
    keep = np.cumprod(passes, axis=-1).astype(bool)
    out = np.zeros_like(keep)
    np.put_along_axis(out, order, keep, axis=-1)
    return out


def looks(plan: AdaptiveSeeds) -> list[int]:
    """Seeds per configuration at each round: min, min + batch, ..., max."""
    out = [plan.min]
    while out[-1] < plan.max:
        out.append(min(out[-1] + plan.batch, plan.max))
    return out


@dataclass
class Decision:
    """The state of every compared row after the seeds run so far (arrays over rows, with
    any leading batch axes)."""

    n: np.ndarray
    """Seeds each row has been compared on."""
    k: np.ndarray
    """Its wealth K_n."""
    p: np.ndarray
    """Its anytime-valid p-value."""
    state: np.ndarray
    """DIFFERENT, NOT_DETECTABLE, UNDECIDED or RUNNING (takes the next batch of seeds)."""


def decide(k_path: np.ndarray, n: np.ndarray, plan: AdaptiveSeeds) -> Decision:
    """Each row's state given the wealth paths `k_path` (..., rows, max) and the seeds `n`
    (..., rows) each has run: Holm on the p-values at those seeds, then the futility bound."""
    n = np.asarray(n, dtype=int)
    at = np.clip(n - 1, 0, None)[..., None]
    k = np.where(n > 0, np.take_along_axis(k_path, at, axis=-1)[..., 0], 1.0)
    p = np.where(n > 0, np.take_along_axis(p_values(k_path), at, axis=-1)[..., 0], 1.0)
    rejected = holm_reject(p, plan.alpha)
    reachable = k * (1.0 + C) ** (plan.max - n) >= 1.0 / plan.alpha
    state = np.full(n.shape, RUNNING, dtype=object)
    state[(n >= plan.max)] = UNDECIDED
    state[~reachable & (p > plan.alpha)] = NOT_DETECTABLE
    state[rejected] = DIFFERENT
    return Decision(n, k, p, state)


def run_rounds(d: np.ndarray, plan: AdaptiveSeeds) -> Decision:
    """The whole sequential experiment on paired differences `d` (..., rows, max) known in
    advance (a simulation): round by round, rows still RUNNING take the next look's seeds;
    the rest keep the seeds they had. The returned decision is the last round's."""
    k_path = wealth(d)
    n = np.full(d.shape[:-1], plan.min, dtype=int)
    for target in looks(plan)[1:]:
        dec = decide(k_path, n, plan)
        running = dec.state == RUNNING
        if not running.any():
            break
        n = np.where(running, target, n)
    return decide(k_path, n, plan)


def seeds_spent(dec: Decision) -> np.ndarray:
    """Trials a finished experiment ran: every row's seeds, plus the baseline's, which runs
    every seed some row needed (..., )."""
    return dec.n.sum(axis=-1) + dec.n.max(axis=-1)


def simulated_power(
    plan: AdaptiveSeeds, rows: int, effect: float, sims: int = 20_000, seed: int = 0
) -> tuple[float, float, float]:
    """The design's power to call one row different when its paired differences are
    N(effect, 1) (effect in units of their standard deviation) and the other `rows` - 1
    rows equal the baseline, and the mean and maximum trials it spends (rows + baseline).
    Monte Carlo with a seeded generator: the same claim every time it is asked."""
    rng = np.random.default_rng([seed, rows, plan.min, plan.max, plan.batch])
    d = rng.standard_normal((sims, rows, plan.max))
    d[:, 0, :] += effect
    dec = run_rounds(d, plan)
    spent = seeds_spent(dec)
    return float(np.mean(dec.state[:, 0] == DIFFERENT)), float(spent.mean()), float(spent.max())


def fewest_to_decide(plan: AdaptiveSeeds, rows: int) -> int:
    """Seeds a row needs at the very least before Holm can call it different (all its seeds
    agreeing in sign and growing in size); above `max`, no row can be decided."""
    return math.ceil(math.log(2 * rows / plan.alpha) / math.log(1.0 + C))
