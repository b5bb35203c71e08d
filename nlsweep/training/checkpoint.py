"""Trial checkpoints: a `Trainer`'s complete training state in one folder, and back.

The folder holds one file, `trainer.pt`, written with `torch.save` and read with
`torch.load(weights_only=True)`: tensors, numbers, strings, lists and dicts only, so loading a
checkpoint runs no code from it. The state carries its own format version
(`nlsweep.training.STATE_FORMAT`), checked on load. Ray Tune moves the folder into the trial's
storage and keeps the newest two (see `nlsweep/execution/sweep.py`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from nlsweep.training.trainer import STATE_FORMAT, Trainer

CHECKPOINT_FILE = "trainer.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored; the message names the file and why."""


def save(trainer: Trainer, folder: str | Path) -> float:
    """Write the trainer's state into `folder`; returns the seconds it took."""
    return save_state(trainer.state_dict(), folder)


def save_state(state: dict, folder: str | Path) -> float:
    """Write a `Trainer.state_dict()` into `folder`; returns the seconds it took."""
    t0 = time.perf_counter()
    path = Path(folder) / CHECKPOINT_FILE
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a reader never sees half a file
    return time.perf_counter() - t0


def load(folder: str | Path) -> dict:
    """The training state saved in `folder`, for `Trainer.load_state_dict`."""
    path = Path(folder) / CHECKPOINT_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (not an nlsweep trial checkpoint)") from None
    except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
        raise CheckpointError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: state format {found!r}, expected {STATE_FORMAT}")
    return state


def restore(trainer: Trainer, folder: str | Path) -> None:
    """Load the state saved in `folder` into `trainer` (tensors go to its device)."""
    trainer.load_state_dict(load(folder))
