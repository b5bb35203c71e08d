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


@pytest.mark.slow
def test_the_gated_lstm_plugin_package_passes_its_own_tests(tmp_path):
    """examples/plugin_gated_lstm: an out-of-tree package, its model, spec and test; its
    sweep runs through Ray and MLflow from a folder that is not nlsweep's checkout."""
    folder = ROOT / "examples" / "plugin_gated_lstm"
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
         str(folder), str(folder / "test_gated_lstm.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "3 passed" in out.stdout


@pytest.mark.slow
def test_a_plain_module_plugin_sweeps_with_run_sweep_py(tmp_path):
    """A plain nn.Module LM (only a forward) in a .py file beside its spec, swept by
    `python run_sweep.py SPEC` as the README says, from another folder."""
    import shutil

    from nlsweep.api import load_trials

    folder = tmp_path / "plain"
    shutil.copytree(ROOT / "examples" / "plugin_plain_lm", folder)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = subprocess.run(
        [sys.executable, str(ROOT / "run_sweep.py"), str(folder / "spec.yaml"),
         "--tracking-uri", uri, "--storage", str(tmp_path / "ray")],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    trials = load_trials("tiny_lm", tracking_uri=uri)
    assert len(trials) == 2 and trials["status"].eq("FINISHED").all()
    assert trials["val/bpc"].notna().all() and (trials["cms/fast/updates"] == 20).all()
    assert (tmp_path / "reports" / "tiny_lm.md").is_file()
