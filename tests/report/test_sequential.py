"""Sequential seeds, proved by simulation: the family-wise false-positive rate under optional
stopping, the design's power claim, and the naive re-testing the same harness must reject.

Each null case runs 10,000 simulated sequential experiments (3 rows against a baseline, seeds
3 to 12 in batches of 2), vectorised, with noise from a seeded generator. A rule passes the
null check when its family-wise rate is at most alpha + 3 Monte Carlo standard errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from nlsweep.config.seeds import AdaptiveSeeds
from nlsweep.report import power as pw
from nlsweep.report import sequential as sq
from nlsweep.report.stats import holm

PLAN = AdaptiveSeeds(min=3, max=12, batch=2, alpha=0.05)
SIMS = 10_000
ROWS = 3


def normal(rng, shape):
    return rng.standard_normal(shape)


def heavy(rng, shape):
    """Student t with 1.5 degrees of freedom: infinite variance."""
    return rng.standard_t(1.5, shape)


def some_seeds_fail(rng, shape):
    """Passkey's shape: 40% of seeds never learn the task (0), the others reach ~0.9."""
    learned = rng.random(shape) >= 0.4
    return np.where(learned, 0.9 + 0.05 * rng.standard_normal(shape), 0.0)


def experiments(noise, seed: int, rows: int = ROWS, sims: int = SIMS):
    """Baseline and rows drawn from the same distribution (the null): their paired
    differences (sims, rows, max); the baseline's noise is shared by every row, as in a sweep."""
    rng = np.random.default_rng(seed)
    base = noise(rng, (sims, 1, PLAN.max))
    return noise(rng, (sims, rows, PLAN.max)) - base


def naive_rounds(d: np.ndarray, plan: AdaptiveSeeds) -> np.ndarray:
    """Peeking: a fixed-n paired t-test (Holm) after each batch; a row rejected at any round
    stays rejected, the others take more seeds. Returns the rows ever rejected."""
    ever = np.zeros(d.shape[:-1], dtype=bool)
    for n in sq.looks(plan):
        x = d[..., :n]
        sd = x.std(axis=-1, ddof=1)
        with np.errstate(invalid="ignore", divide="ignore"):  # all seeds equal: no test
            t = x.mean(axis=-1) / (sd / math.sqrt(n))
        p = 2 * sps.t.sf(np.abs(t), n - 1)
        ever |= sq.holm_reject(np.where(np.isfinite(p), p, 1.0), plan.alpha)
    return ever


def within_null_bound(rejected_any: np.ndarray, alpha: float) -> tuple[bool, float, float]:
    rate = float(rejected_any.mean())
    bound = alpha + 3 * math.sqrt(alpha * (1 - alpha) / len(rejected_any))
    return rate <= bound, rate, bound


@pytest.mark.parametrize("noise", [normal, heavy, some_seeds_fail])
def test_family_wise_error_holds_under_optional_stopping(noise):
    d = experiments(noise, seed=11)
    dec = sq.run_rounds(d, PLAN)
    ok, rate, bound = within_null_bound((dec.state == sq.DIFFERENT).any(axis=-1), PLAN.alpha)
    assert ok, f"{noise.__name__}: family-wise rate {rate:.4f} > {bound:.4f}"
    # rows really were stopped at different rounds: the rule is sequential, not fixed-n
    assert len(np.unique(dec.n)) >= 3


@pytest.mark.parametrize("noise", [normal, some_seeds_fail])
def test_naive_retesting_fails_the_same_null_check(noise):
    d = experiments(noise, seed=12)
    ok, rate, bound = within_null_bound(naive_rounds(d, PLAN).any(axis=-1), PLAN.alpha)
    assert not ok, f"{noise.__name__}: naive re-testing kept {rate:.4f} <= {bound:.4f}"


@pytest.mark.parametrize("effect", [1.0, 2.0])
def test_power_matches_the_designs_claim(effect):
    claim, mean_cost, max_cost = sq.simulated_power(PLAN, ROWS, effect)
    # An independent harness: another generator, the row's effect on top of a shared
    # baseline's noise, the other rows null, the same round-by-round rule.
    rng = np.random.default_rng(99)
    base = rng.standard_normal((SIMS, 1, PLAN.max)) / math.sqrt(2)
    rows = rng.standard_normal((SIMS, ROWS, PLAN.max)) / math.sqrt(2)
    rows[:, 1, :] += effect  # differences N(effect, 1), as the claim states
    dec = sq.run_rounds(rows - base, PLAN)
    got = float(np.mean(dec.state[:, 1] == sq.DIFFERENT))
    se = math.sqrt(claim * (1 - claim) / 20_000 + got * (1 - got) / SIMS)
    assert abs(got - claim) <= 3 * se, (effect, got, claim)
    assert (ROWS + 1) * PLAN.min <= mean_cost <= max_cost <= (ROWS + 1) * PLAN.max
    assert claim > 0.3  # a design that can decide something at these sizes


def test_power_grows_with_the_effect_and_no_row_is_decided_too_early():
    claims = [sq.simulated_power(PLAN, ROWS, e, sims=4000)[0] for e in (0.0, 1.0, 2.0, 3.0)]
    assert claims == sorted(claims) and claims[0] < PLAN.alpha and claims[-1] > 0.9
    n_min = sq.fewest_to_decide(PLAN, ROWS)
    d = np.full((1, ROWS, PLAN.max), 5.0)  # every seed agrees: decided as early as possible
    dec = sq.run_rounds(d, PLAN)
    assert (dec.state == sq.DIFFERENT).all()
    assert dec.n.min() >= n_min and dec.n.max() == min(x for x in sq.looks(PLAN) if x >= n_min)


def test_wealth_is_the_formula_seed_by_seed():
    rng = np.random.default_rng(3)
    d = rng.standard_normal(9) + 0.4
    d[4] = 0.0
    k_up = k_down = 1.0
    sum_x = sum_w2 = sum_mag = 0.0
    expected = []
    for i, di in enumerate(d):
        mag = abs(di)
        scale = max(mag, sum_mag / i) if i else mag
        w = mag / scale if scale > 0 else 0.0
        x = math.copysign(w, di) if di else 0.0
        up = min(max((1 + sum_x) / (1 + sum_w2), 0.0), sq.C)
        down = min(max((1 - sum_x) / (1 + sum_w2), 0.0), sq.C)
        k_up *= 1 + up * x
        k_down *= 1 - down * x
        expected.append((k_up + k_down) / 2)
        sum_x, sum_w2, sum_mag = sum_x + x, sum_w2 + w * w, sum_mag + mag
    np.testing.assert_allclose(sq.wealth(d), expected, rtol=1e-12)
    # rows are independent: a row's wealth does not depend on the rows batched with it
    batch = np.stack([d, rng.standard_normal(9), -d])
    np.testing.assert_allclose(sq.wealth(batch)[0], expected, rtol=1e-12)
    np.testing.assert_allclose(sq.wealth(batch)[2], expected, rtol=1e-12)  # two-sided


def test_wealth_is_a_fair_game_under_the_null():
    d = experiments(heavy, seed=5, rows=1, sims=200_000)[:, 0, :]
    mean = sq.wealth(d)[:, -1].mean()
    assert abs(mean - 1.0) < 0.05, mean  # E[K_n] = 1 for a martingale started at 1


def test_holm_matches_the_reports_adjustment():
    rng = np.random.default_rng(8)
    p = rng.random((500, 5)) ** 3
    adjusted = np.array([holm(list(row)) for row in p], dtype=float)
    np.testing.assert_array_equal(sq.holm_reject(p, 0.05), adjusted <= 0.05)


def test_decisions_read_only_the_seeds_each_row_ran():
    d = np.array([[4.0, 3.0, 5.0, 4.0, 6.0, 5.0, 7.0, -50.0]])
    at6 = sq.decide(sq.wealth(d), np.array([6]), AdaptiveSeeds(3, 8, 1, 0.05))
    assert at6.state[0] == sq.DIFFERENT and at6.n[0] == 6
    fut = sq.decide(sq.wealth(-np.abs(d[:, :3]) * [[1, -1, 1]]), np.array([3]),
                    AdaptiveSeeds(3, 4, 1, 0.05))  # fmt: skip
    assert fut.state[0] == sq.NOT_DETECTABLE  # 1.9 more at most cannot reach 20


def test_fixed_design_power_matches_simulated_t_tests():
    rng = np.random.default_rng(21)
    n, delta, sd, alpha = 5, 1.2, 1.0, 0.05
    d = delta + sd * rng.standard_normal((40_000, n))
    p = sps.ttest_1samp(d, 0.0, axis=1).pvalue
    got = float((p <= alpha).mean())
    claim = pw.power(delta, sd / math.sqrt(n), n - 1, alpha)
    assert abs(got - claim) <= 3 * math.sqrt(claim * (1 - claim) / len(p)), (got, claim)


def test_minimum_detectable_effect_and_seeds_needed_agree():
    row = {0: 1.0, 1: 1.6, 2: 0.7, 3: 1.3}
    base = {0: 0.2, 1: 0.5, 2: 0.4, 3: 0.1}
    det = pw.detectable(row, base, alpha=0.05)
    d = np.array([row[s] - base[s] for s in range(4)])
    assert det.sd == pytest.approx(d.std(ddof=1))
    assert pw.power(det.mde, det.sd / 2, 3, 0.05) == pytest.approx(0.8, abs=1e-6)
    # the fixed design that detects the MDE with 80% power needs the 4 seeds it has
    assert pw.seeds_for(det.mde, det.sd, 0.05, 0.8, paired=True) == 4
    need = pw.seeds_needed(det.mde, det.sd, 4, 0.05, 0.8, paired=True)
    assert need.low <= need.point == 4 <= need.high
    unpaired = pw.detectable({0: 1.0, 1: 2.0}, {5: 0.0, 6: 0.5, 7: 1.0}, alpha=0.05)
    assert unpaired.mde > 0 and math.isfinite(unpaired.mde)
    assert math.isnan(pw.detectable({0: 1.0}, {0: 0.0}, 0.05).mde)


def test_holm_levels_are_the_step_down_levels():
    assert pw.holm_levels([0.03, None, 0.001, 0.2], 0.05) == [0.025, 0.05 / 4, 0.05 / 3, 0.05]
