"""The progress line's ETA: remaining evaluations at the measured time per evaluation."""

import pytest

from nlsweep.forecast import TrialProgress, duration, eta_s, progress_line


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
