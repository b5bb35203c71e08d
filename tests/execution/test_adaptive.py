"""Adaptive seeds end to end: rounds in one Ray experiment and one MLflow parent run, stopped by
the sequential rule, resumed after a SIGKILL within a round to the same trials, values and
decisions as a sweep that ran straight through (the rounds' state between rounds is
recomputed from the store: tests/report/test_adaptive_rounds.py)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nlsweep.cli import main
from nlsweep.execution.experiment import MARKER, TUNER_FILE
from nlsweep.tracking.store import Tracker
from nlsweep.tracking.tags import PARENT_TAG, TAG_RESUMED, TAG_ROLE
from tests.helpers import ROOT

pytestmark = pytest.mark.slow

# A learning rate that trains against one that barely moves: decided as soon as the rule can
# (7 seeds for one row at alpha 0.05); the rounds are 3, 5, 7 seeds.
SPEC = """\
name: adaptive
base:
  model: {kind: nested_lstm, d_model: 16, d_ff: 32}
  optim: {kind: adam, lr: 3.0e-3}
  data:  {corpus: pydoc, seq_len: 32, batch_size: 8}
  train: {steps: 200, eval_every: 100, eval_batches: 2, seed: 0, checkpoint_every: 100}
space:
  optim.lr: {grid: [3.0e-3, 1.0e-5]}
  train.seed: {grid: [0, 1, 2]}
baseline: {optim.lr: 3.0e-3}
seeds:
  adaptive: {min: 3, max: 7, batch: 2, alpha: 0.05}
report: {effect_of_interest: 0.5}
search: {algorithm: grid}
resources: {cpu: 1}
max_concurrent: 2
"""


class Sweep:
    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.spec = folder, folder / "spec.yaml"
        self.spec.write_text(SPEC)
        self.uri = f"sqlite:///{folder / 'mlflow.db'}"
        self.log = folder / "out.txt"

    def start(self, *extra) -> subprocess.Popen:
        env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1", "PYTHONUNBUFFERED": "1"}
        args = [sys.executable, str(ROOT / "run_sweep.py"), str(self.spec), "--storage",
                str(self.folder / "ray"), "--tracking-uri", self.uri, *extra]  # fmt: skip
        with open(self.log, "a") as out:
            return subprocess.Popen(args, cwd=self.folder, env=env, stdout=out, stderr=out)

    def text(self) -> str:
        return self.log.read_text()

    def trials(self) -> list:
        runs = Tracker(self.uri).runs("adaptive")
        return [r for r in runs if r.data.tags.get(TAG_ROLE) == "trial"]

    def finals(self) -> dict[tuple, float]:
        """(lr, seed) -> final val/bpc of its FINISHED run; each must have exactly one."""
        out = {}
        for r in self.trials():
            if r.info.status != "FINISHED":
                continue
            key = (float(r.data.params["optim.lr"]), int(r.data.params["train.seed"]))
            assert key not in out, f"{key} finished twice"
            out[key] = r.data.metrics["val/bpc"]
        return out


def kill_when(proc: subprocess.Popen, condition, what: str, timeout: float = 240.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if condition():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            return
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended (rc {proc.returncode}) before {what}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def test_adaptive_rounds_stop_on_the_rule_and_resume_after_kills(tmp_path):
    straight = Sweep(tmp_path / "straight")
    assert straight.start().wait(timeout=900) == 0, straight.text()[-3000:]
    out = straight.text()
    # round 1 (3 seeds) and round 2 (5) leave the row undecided; at 7 it is decided
    assert "adaptive seeds: undecided yet: lr=1e-05 (n=3)" in out
    assert "adaptive seeds: undecided yet: lr=1e-05 (n=5)" in out
    assert "adaptive seeds: different: lr=1e-05 (n=7)" in out
    assert out.count("adding seeds to") == 2
    finals = straight.finals()
    assert sorted(finals) == sorted((lr, s) for lr in (3e-3, 1e-5) for s in range(7))
    # one Ray experiment, one parent run: every trial is its child
    parents = {r.data.tags.get(PARENT_TAG) for r in straight.trials()}
    assert len(parents) == 1
    report = (straight.folder / "reports" / "adaptive.md").read_text()
    assert "## Adaptive seeds" in report and "decided: differs from the baseline" in report
    assert "| seeds | adaptive, 3 to 7 per configuration" in report and "14 trials spent" in report
    assert "MDE (80% power)" in report and "Decided: R2 `lr=1e-05` differs" in report
    assert "Seeds per configuration a fixed design needs to detect Δ = 0.5" in report
    assert "this sweep's decisions are the sequential rule's" in report

    killed = Sweep(tmp_path / "killed")

    def second_round_started():  # (a run just created may not have its params logged yet)
        return any(int(r.data.params.get("train.seed", -1)) >= 3 for r in killed.trials())

    # Within a round: once the second round has started its first trial.
    proc = killed.start()
    kill_when(proc, second_round_started, "a second-round trial")
    assert "adaptive seeds: different" not in killed.text()
    proc = killed.start("--resume")
    assert proc.wait(timeout=900) == 0, killed.text()[-3000:]
    assert killed.text().count("adaptive seeds: different: lr=1e-05 (n=7)") == 1
    assert killed.finals() == pytest.approx(finals, rel=1e-9)
    parent = [r for r in Tracker(killed.uri).runs("adaptive")
              if r.data.tags.get(TAG_ROLE) == "sweep"]  # fmt: skip
    assert len(parent) == 1 and parent[0].data.tags[TAG_RESUMED] == "1"
    assert parent[0].info.status == "FINISHED"

    # Between rounds: killed while Tune wrote the next round's tuner.pkl, which the marker
    # says is being made ("opening") and the seal has no digest of. Made here as that kill
    # leaves it (a timed kill rarely lands in the window): the resume must not load the
    # file but make the round again from the store, to the same trials and values.
    between = Sweep(tmp_path / "between")
    proc = between.start()
    kill_when(proc, lambda: second_round_started_in(between), "a second-round trial")
    folder = between.folder / "ray" / "adaptive"
    marker = json.loads((folder / MARKER).read_text())
    (folder / MARKER).write_text(json.dumps({**marker, "opening": "1"}))
    (folder / TUNER_FILE).write_bytes(b"")  # half written: nothing of it is trusted
    proc = between.start("--resume")
    assert proc.wait(timeout=900) == 0, between.text()[-3000:]
    assert between.finals() == pytest.approx(finals, rel=1e-9)
    assert json.loads((folder / MARKER).read_text())["opening"] == ""


def second_round_started_in(sweep: Sweep) -> bool:
    return any(int(r.data.params.get("train.seed", -1)) >= 3 for r in sweep.trials())


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("seeds.adaptive.min=9", "seeds.adaptive.min: at most max (7), got 9"),
        ("seeds.adaptive.batch=0", "seeds.adaptive.batch: at least 1 seed per round, got 0"),
        ("seeds.adaptive.alpha=0.5", "seeds.adaptive.alpha: a level in (0, 0.5), got 0.5"),
        ("seeds.adaptive.alpha=0", "seeds.adaptive.alpha: a level in (0, 0.5), got 0.0"),
    ],
)
def test_bad_adaptive_settings_are_one_line(tmp_path, capsys, setting, message):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    assert main(["validate", str(spec), "--set", setting]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"{spec}:--set: {message}"


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ("baseline:", "seeds.adaptive: a baseline: the configuration every row is compared"),
        ("train.seed:", "seeds.adaptive: a space factor train.seed: {grid: [0, 1, 2]}"),
    ],
)
def test_adaptive_seeds_need_a_seed_factor_and_a_baseline(tmp_path, capsys, drop, message):
    spec = tmp_path / "spec.yaml"
    lines = [x for x in SPEC.splitlines(True) if drop not in x]
    spec.write_text("".join(lines))
    line = next(i for i, x in enumerate(lines, 1) if "adaptive:" in x)
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{spec}:{line}: {message}"), err
    assert len(err.splitlines()) == 1


def test_dry_run_shows_the_least_and_most_an_adaptive_sweep_costs(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    assert main(["run", str(spec), "--dry-run", "--tracking-uri",
                 f"sqlite:///{tmp_path / 'm.db'}"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "2 configurations x 3 to 7 seeds (rounds of 2: 3, 5, 7)" in out
    assert "at least 6 trials (the first round, above), at most 14" in out
    assert "a row needs at least 6 seeds to be called different" in out
    assert not (tmp_path / "m.db").exists()  # the dry run wrote nothing
