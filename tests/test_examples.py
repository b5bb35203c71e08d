"""The examples run as a reader runs them, from another folder than the checkout."""

import subprocess
import sys

import pytest

from tests.helpers import ROOT


@pytest.mark.slow
def test_the_api_example_sweeps_reads_back_reports_and_trains(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "api_quickstart.py"), "--workdir", str(tmp_path),
         "--steps", "20"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "quickstart: 4 trials, grid search" in out.stdout
    assert "best: medium=" in out.stdout
    assert (tmp_path / "reports" / "quickstart.md").is_file()
    assert (tmp_path / "again.md").read_text().startswith("#")
    assert "one trial without Ray: step 20" in out.stdout
    # The same store through the command line: every trial, one CSV row each.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    csv = tmp_path / "trials.csv"
    cli = [sys.executable, "-m", "nlsweep", "trials", "quickstart", "--tracking-uri", uri]
    done = subprocess.run([*cli, "--csv", str(csv)], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    import pandas as pd

    frame = pd.read_csv(csv)
    assert len(frame) == 4 and frame["status"].eq("FINISHED").all()
    assert sorted(zip(frame["cms.periods.medium"], frame["seed"])) == [
        (2, 0),
        (2, 1),
        (8, 0),
        (8, 1),
    ]
    assert {"trial", "run_id", "val/bpc", "val/loss"} <= set(frame.columns)
    assert frame["final"].tolist() == frame["val/bpc"].tolist()
