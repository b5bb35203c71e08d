"""One trial, without Ray: its typed config (`TrialConfig`), the training loop (`Trainer`,
whose whole state is explicit data), checkpoints that restore it exactly, data parallelism
inside a trial, and the registry of evaluators, whose declared metrics are the objectives a
trial can report."""

from nlsweep.training.checkpoint import CheckpointError, load, restore, save
from nlsweep.training.evaluators import (
    EvalContext,
    Evaluator,
    evaluator_names,
    objectives,
    register_evaluator,
)
from nlsweep.training.parallel import DataParallel
from nlsweep.training.runtime import DIVERGED, Diverged, pick_device
from nlsweep.training.trainer import STATE_FORMAT, Trainer
from nlsweep.training.trial import StateConfig, TrainConfig, TrialConfig

__all__ = [
    "DIVERGED", "STATE_FORMAT", "CheckpointError", "DataParallel", "Diverged", "EvalContext",
    "Evaluator", "StateConfig", "TrainConfig", "Trainer", "TrialConfig", "evaluator_names",
    "load", "objectives", "pick_device", "register_evaluator", "restore", "save",
]  # fmt: skip
