"""The rounds of an adaptive-seeds sweep as the store's runs determine them: which trials the
next round runs, for which rows, and what a failed or killed trial counts as."""

import math

import numpy as np

from nlsweep.config.seeds import AdaptiveSeeds, seed_sequence
from nlsweep.report import sequential as sq
from nlsweep.report.adaptive import progress
from nlsweep.report.results import Context, Row, Trial, build_rows
from nlsweep.report.stats import summarize
from nlsweep.tracking.read import RunData

PLAN = AdaptiveSeeds(min=3, max=7, batch=2, alpha=0.05)


def trial(factor: str, seed: int, value: float | None, status: str = "FINISHED") -> Trial:
    run = RunData(f"r-{factor}-{seed}", "x", status, 0, None, {}, {}, {})
    return Trial(run, {"variant": factor}, seed, value if status == "FINISHED" else None, None)


def row(factor: str, values: dict, baseline: bool = False, status: dict | None = None) -> Row:
    status = status or {}
    trials = [trial(factor, s, v, status.get(s, "FINISHED")) for s, v in values.items()]
    done = [t.final for t in trials if t.final is not None]
    return Row({"variant": factor}, trials, summarize(done), summarize(done),
               is_baseline=baseline)  # fmt: skip


def points(prog) -> set:
    return {(p["variant"], p["train.seed"]) for p in prog.points}


def test_first_round_then_only_undecided_rows_and_their_baseline_take_seeds():
    plan = AdaptiveSeeds(min=3, max=9, batch=2, alpha=0.05)
    base = row("base", {0: 1.0, 1: 1.0, 2: 1.0}, baseline=True)
    far = row("far", {0: 3.0, 1: 3.0, 2: 3.0})
    same = row("same", {0: 1.05, 1: 1.0, 2: 1.05})
    prog = progress([base, far, same], [0, 1, 2], ["variant"], plan)
    assert [s.state for s in prog.rows] == [sq.RUNNING, sq.RUNNING]
    assert points(prog) == {(v, s) for v in ("base", "far", "same") for s in (3, 4)}
    # round 2 done: 'same' can no longer reach 1/alpha by 9 seeds, 'far' still can
    for r, vals in ((base, {3: 1.0, 4: 1.0}), (far, {3: 3.1, 4: 3.1}), (same, {3: 0.9, 4: 1.2})):
        r.trials += [trial(r.factors["variant"], s, v) for s, v in vals.items()]
    prog = progress([base, far, same], [0, 1, 2], ["variant"], plan)
    assert {s.row.label: s.state for s in prog.rows} == {
        "variant=far": sq.RUNNING,
        "variant=same": sq.NOT_DETECTABLE,
    }
    assert points(prog) == {(v, s) for v in ("base", "far") for s in (5, 6)}
    for r, vals in ((base, {5: 1.0, 6: 1.0}), (far, {5: 3.2, 6: 3.2})):
        r.trials += [trial(r.factors["variant"], s, v) for s, v in vals.items()]
    prog = progress([base, far, same], [0, 1, 2], ["variant"], plan)
    assert prog.done and prog.rows[0].state == sq.DIFFERENT and prog.rows[0].n == 7
    assert prog.spent == {"variant=far": 7, "variant=same": 5, "variant=base": 7}
    # the decision is the formula's on the seeds compared
    d = np.array([[2.0, 2.0, 2.0, 2.1, 2.1, 2.2, 2.2]])
    assert math.isclose(prog.rows[0].k, sq.wealth(d)[0, -1])


def test_failed_seeds_count_as_run_and_killed_ones_run_again():
    base = row("base", {0: 1.0, 1: 1.1, 2: 0.9}, baseline=True)
    other = row("other", {0: 2.0, 1: None, 2: None}, status={1: "FAILED", 2: "KILLED"})
    prog = progress([base, other], [0, 1, 2], ["variant"], PLAN)
    assert points(prog) == {("other", 2)}  # seed 1 failed: not again; seed 2 was killed
    assert prog.rows[0].n == 0 and prog.rows[0].state == sq.RUNNING


def test_a_run_killed_before_its_parameters_belongs_to_no_row_and_its_trial_runs_again():
    ctx = Context(None, "x", "val/bpc", "min", "grid", ["variant"], {"variant": "base"},
                  {"variant": {"grid": ["base", "other"]}})  # fmt: skip
    trials = [trial("base", s, 1.0 + s / 10) for s in range(3)]
    trials += [trial("other", s, 2.0 + s / 7) for s in range(2)]
    blank = RunData("r-blank", "x", "KILLED", 0, None, {}, {}, {})  # created, then killed
    trials.append(Trial(blank, {}, None, None, None))
    rows = build_rows(trials, ctx)
    assert [r.label for r in rows] == ["variant=base", "variant=other"]
    assert sum(len(r.trials) for r in rows) == 5
    assert points(progress(rows, [0, 1, 2], ["variant"], PLAN)) == {("other", 2)}


def test_seed_order_continues_after_the_largest_first_seed():
    assert seed_sequence([5, 2, 9], 6) == [5, 2, 9, 10, 11, 12]
    base = row("base", {5: 1.0, 2: 1.1, 9: 0.9}, baseline=True)
    other = row("other", {5: 2.0, 2: 2.1, 9: 2.0})
    prog = progress([base, other], [5, 2, 9], ["variant"], PLAN)
    assert points(prog) == {(v, s) for v in ("base", "other") for s in (10, 11)}
