import os
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"

if "NLSWEEP_DATA" not in os.environ and SHARED_DATA.is_dir():
    os.environ["NLSWEEP_DATA"] = str(SHARED_DATA)

# A complete, valid spec; tests edit copies of it.
GOOD_SPEC = """\
name: tiny
description: a test sweep
metric: val/bpc
mode: min
base:
  model: {kind: nested_lstm, d_model: 16, d_ff: 32}
  cms:   {periods: {fast: 1, medium: 2, slow: 4}}
  optim: {kind: adam, lr: 3.0e-3}
  data:  {corpus: pydoc, seq_len: 16, batch_size: 4}
  train: {steps: 8, eval_every: 4, eval_batches: 2, seed: 0}
space:
  cms.periods.medium: {grid: [1, 2]}
  train.seed: {grid: [0, 1]}
search: {algorithm: grid}
resources: {cpu: 1, gpu: 0}
max_concurrent: 2
"""


@pytest.fixture
def write_spec(tmp_path):
    def write(text: str = GOOD_SPEC, name: str = "spec.yaml") -> Path:
        p = tmp_path / name
        p.write_text(textwrap.dedent(text))
        return p

    return write


def has_shakespeare() -> bool:
    d = os.environ.get("NLSWEEP_DATA")
    return bool(d) and (Path(d) / "tinyshakespeare" / "input.txt").is_file()
