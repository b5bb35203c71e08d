"""A trial whose worker hangs (SIGSTOP) no longer hangs the sweep: past `train.stall_s` of
silence its worker is killed and the trial retried from its checkpoint; hung again with no
retries left, it is FAILED with reason "stalled: no report for N s", and the sweep ends."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nlsweep.tracking.store import Tracker
from nlsweep.tracking.tags import TAG_ERROR, TAG_ROLE
from tests.helpers import ROOT

SPEC = """\
name: stalls
base:
  model: {kind: nested_lstm, d_model: 16, d_ff: 32}
  data:  {corpus: pydoc, seq_len: 16, batch_size: 4}
  train: {steps: 100000, eval_every: 50, eval_batches: 1, seed: 0, checkpoint_every: 100,
          stall_s: 12}
space:
  train.seed: {grid: [0]}
search: {algorithm: grid}
resources: {cpu: 1}
max_failures: 1
"""

pytestmark = pytest.mark.slow


def reports(folder: Path) -> list[dict]:
    out = []
    for f in folder.glob("ray/stalls/*/result.json"):
        for line in f.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line being written
                out.append(json.loads(line))
    return out


def wait_for(find, what, proc, timeout=240):
    end = time.time() + timeout
    while time.time() < end:
        got = find()
        if got:
            return got
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended (rc {proc.returncode}) before {what}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def test_a_hung_trial_is_retried_then_failed_as_stalled(tmp_path):
    (tmp_path / "spec.yaml").write_text(SPEC)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [sys.executable, str(ROOT / "run_sweep.py"), str(tmp_path / "spec.yaml"),
            "--storage", str(tmp_path / "ray"), "--tracking-uri", uri]  # fmt: skip
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1", "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "out.txt"
    stopped = []
    with open(log, "w") as out:
        proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=out, stderr=out)
    try:
        first = wait_for(lambda: next((r for r in reports(tmp_path) if r["step"] >= 200), None),
                         "a checkpointed report", proc)  # fmt: skip
        os.kill(first["pid"], signal.SIGSTOP)
        stopped.append(first["pid"])
        retry = wait_for(lambda: next((r for r in reports(tmp_path)
                                       if r["pid"] != first["pid"]), None),
                         "the retry's first report", proc)  # fmt: skip
        # retried from its checkpoint, not from scratch
        assert retry["step"] > 100 and retry["iterations_since_restore"] < retry["step"] // 50
        os.kill(retry["pid"], signal.SIGSTOP)
        stopped.append(retry["pid"])
        assert proc.wait(timeout=240) == 1, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in stopped:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    trials = [r for r in Tracker(uri).runs("stalls") if r.data.tags.get(TAG_ROLE) == "trial"]
    assert len(trials) == 1 and trials[0].info.status == "FAILED"
    why = trials[0].data.tags[TAG_ERROR]
    assert why.startswith("stalled: no report for ") and why.endswith(" s"), why
    assert "late: " in log.read_text()  # the progress line named it while it was silent
