"""Constants and helpers shared by the tests."""

import contextlib
import copy
import os
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
NO_GPU = {"CPU": 2.0, "GPU": 0.0}
"""Resources of a machine without GPUs, for specs loaded in tests."""
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


GOOD = yaml.safe_load(GOOD_SPEC)
"""The good spec as a dict: tests change it with `spec_text`, never by replacing text (the
spec-error tests, which check line numbers, edit the text on purpose)."""


def spec_text(changes: dict | None = None, drop: tuple = (), base: dict | None = None) -> str:
    """A spec as YAML (`yaml.safe_dump`) from the good one: each change `"base/train/steps":
    12` sets that key (paths split on '/', since space keys hold dots), each path in `drop`
    is removed."""
    spec = copy.deepcopy(GOOD if base is None else base)
    for path, value in (changes or {}).items():
        *parents, leaf = path.split("/")
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    for path in drop:
        *parents, leaf = path.split("/")
        node = spec
        for key in parents:
            node = node[key]
        del node[leaf]
    return yaml.safe_dump(spec, sort_keys=False)


def has_shakespeare() -> bool:
    d = os.environ.get("NLSWEEP_DATA")
    return bool(d) and (Path(d) / "tinyshakespeare" / "input.txt").is_file()


def edit(old: str, new: str, text: str = GOOD_SPEC) -> str:
    """`text` (the good spec) with `old` replaced, which must be there."""
    assert old in text, old
    return text.replace(old, new)


def one_line(capsys) -> str:
    """What the command printed on stderr, which must be one line."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def nothing_started(folder: Path) -> None:
    """No tracking store, no Ray storage and no Ray instance came of a refused command."""
    import ray

    assert not (folder / "mlflow.db").exists()
    assert not (folder / "ray_results").exists()
    assert not ray.is_initialized()


@contextlib.contextmanager
def tmpfs(folder: Path, options: str):
    """A tmpfs mounted at `folder` for the test (`mount -o OPTIONS`), unmounted after; the
    test is skipped where mounting is not allowed."""
    import subprocess

    import pytest

    folder.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True)  # fmt: skip
    if made.returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
