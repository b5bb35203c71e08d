"""The progress line's ETA: remaining evaluations at the measured time per evaluation."""

import pytest

from nlsweep.execution.forecast import (
    TrialProgress,
    cost_lines,
    duration,
    eta_s,
    makespan,
    progress_line,
    step_times,
    sweep_cost,
)


def T(status, reports, seconds):
    return TrialProgress(status, reports, seconds)


@pytest.mark.parametrize(
    ("trials", "planned", "want"),
    [
        # 2 s per evaluation; 4 evaluations a trial. Running: 2 + 3 left; pending created: 4;
        # one not created yet: 4. 13 evaluations x 2 s / 2 at a time = 13 s.
        (
            [T("TERMINATED", 4, 8), T("RUNNING", 2, 4), T("RUNNING", 1, 2), T("PENDING", 0, 0)],
            5,
            13.0,
        ),  # fmt: skip
        ([T("TERMINATED", 4, 8), T("ERROR", 1, 2)], 2, 0.0),  # all ended
        # the median per evaluation (2 s), not a slow outlier's 10 s
        ([T("RUNNING", 1, 2), T("RUNNING", 1, 10), T("RUNNING", 1, 2)], 3, 9 * 2 / 2),
    ],
)
def test_eta_is_the_remaining_evaluations_at_the_median_pace(trials, planned, want):
    assert eta_s(trials, planned, reports=4, concurrency=2) == pytest.approx(want)


def test_no_eta_before_the_first_evaluation_and_the_line_says_so():
    trials = [T("RUNNING", 0, 0), T("PENDING", 0, 0)]
    assert eta_s(trials, 4, 4, 2) is None
    line = progress_line(trials, 4, 4, 2)
    assert line == "trials: 0 done, 1 running, 3 pending; ETA after the first evaluation"


def test_the_line_counts_trials_and_labels_the_estimate():
    trials = [T("TERMINATED", 4, 80), T("RUNNING", 2, 40)]
    line = progress_line(trials, 3, 4, 2)
    assert line.startswith("trials: 1 done, 1 running, 1 pending; ETA ~1m00s (estimate: 2 ")
    assert "ETA at most 1m00s" in progress_line(trials, 3, 4, 2, early_stopping=True)
    assert [duration(s) for s in (5, 75, 3725)] == ["5s", "1m15s", "1h02m"]


def P(d_model=16, steps=100, **more):
    return {"model.kind": "transformer", "model.d_model": str(d_model), "data.seq_len": "64",
            "data.batch_size": "16", "train.steps": str(steps), **more}  # fmt: skip


def test_before_a_sweep_each_trial_costs_its_sizes_past_seconds_per_step():
    bf16 = {"train.precision": "bf16"}
    runs = [(P(16, 100), 50.0), (P(16, 200), 120.0), (P(32, 100), 200.0), (P(16, 0), 9.0)]
    history = step_times([*runs, (P(16, 100, **bf16), 1.0)])
    assert sorted(len(v) for v in history.values()) == [1, 1, 2]  # a 0-step run says nothing
    trials = [(P(16), 400), (P(32), 100), (P(64), 100), (P(16), 400)]
    cost = sweep_cost(trials, history, probe_step_s=None, slots=2)
    # d 16: median(0.5, 0.6) s/step x 400 = 220 s; d 32: 2 s/step x 100; d 64: unknown
    assert cost.trial_s == pytest.approx([220, 200, 220]) and cost.missing == 1
    assert cost.from_history == 3 and cost.wall_s == pytest.approx(420)  # 220+200 | 220
    lines = cost_lines(cost, 2, "STORE", probed=False)
    assert (
        lines[0]
        == "cost: about 7m00s of wall time at 2 at a time, 0.18 trial-hours for 3 of 4 trials"
    )
    assert "3 from earlier finished trials of the same model and data sizes in STORE" in lines[1]
    assert lines[2] == "  1 trials have no estimate (--probe measures one)"
    probed = sweep_cost(trials, history, probe_step_s=3.0, slots=2)
    assert probed.trial_s[2] == 300 and probed.missing == 0
    assert "1 from the probe's step time" in cost_lines(probed, 2, "STORE", True)[1]
    none = sweep_cost(trials, {}, None, 2)
    assert cost_lines(none, 2, "STORE", False)[0].startswith("cost: no estimate")


def test_makespan_runs_trials_in_order_on_free_slots():
    assert makespan([3, 1, 1, 1], 2) == 3 and makespan([1, 1, 1], 1) == 3
    assert makespan([], 4) == 0
