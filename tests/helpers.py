"""Constants and helpers shared by the tests."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"

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


def has_shakespeare() -> bool:
    d = os.environ.get("NLSWEEP_DATA")
    return bool(d) and (Path(d) / "tinyshakespeare" / "input.txt").is_file()
