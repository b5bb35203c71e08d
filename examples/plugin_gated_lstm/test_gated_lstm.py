"""The plugin's own test: its model obeys nlsweep's contract, and its spec sweeps through Ray
and MLflow to a report, run from a folder that is not nlsweep's checkout."""

import shutil
import subprocess
import sys
from pathlib import Path

import nlsweep

HERE = Path(__file__).resolve().parent


def test_the_gate_is_on_the_slow_level_and_the_spec_validates():
    spec = nlsweep.load_spec(HERE / "spec.yaml")
    assert spec.base.model.kind == "gated_lstm" and spec.plan.trials == 4
    trainer = nlsweep.Trainer(spec.base)
    slow = {id(p) for p in trainer.model.level_parameters()["slow"]}
    assert id(trainer.model.gate.logit) in slow


def test_the_kind_keeps_nlsweeps_contract():
    from nlsweep.testing import check_kind

    nlsweep.load_spec(HERE / "spec.yaml")  # imports the plugin
    assert check_kind("gated_lstm", {"gate_init": 1.0}) == {}


def test_the_spec_sweeps_and_reports(tmp_path):
    folder = tmp_path / "plugin"
    shutil.copytree(HERE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "nlsweep", "run", str(folder / "spec.yaml"), "--tracking-uri",
           uri, "--storage", str(tmp_path / "ray")]  # fmt: skip
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    trials = nlsweep.load_trials("gated_lstm", tracking_uri=uri)
    assert len(trials) == 4 and trials["status"].eq("FINISHED").all()
    assert sorted(trials["model.gate_init"]) == [-2.0, -2.0, 2.0, 2.0]
    report = (tmp_path / "reports" / "gated_lstm.md").read_text()
    assert "gate_init" in report and "gated_lstm" in report
