"""One trial, without Ray: its typed config (`TrialConfig`), the training loop (`Trainer`,
whose whole state is explicit data), checkpoints that restore it exactly, data parallelism
inside a trial, and the objectives a trial reports."""

from nlsweep.training.checkpoint import CheckpointError, load, restore, save
from nlsweep.training.parallel import DataParallel
from nlsweep.training.runtime import DIVERGED, Diverged, pick_device
from nlsweep.training.trainer import STATE_FORMAT, Trainer
from nlsweep.training.trial import (
    OBJECTIVES,
    TASK_OBJECTIVES,
    StateConfig,
    TrainConfig,
    TrialConfig,
)

__all__ = [
    "DIVERGED", "OBJECTIVES", "STATE_FORMAT", "TASK_OBJECTIVES", "CheckpointError",
    "DataParallel", "Diverged", "StateConfig", "TrainConfig", "Trainer", "TrialConfig", "load",
    "pick_device", "restore", "save",
]  # fmt: skip
