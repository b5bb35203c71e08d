"""Execution: every Ray import. The sweep runner and its Tune trainable, the MLflow run
logger, starting or joining a cluster, re-runs, the checks before anything starts, the
experiment folder with its seal and lock, and forecasts of a sweep's cost."""

from nlsweep.execution.cluster import ClusterError, start_ray
from nlsweep.execution.experiment import ExperimentError, experiment_path
from nlsweep.execution.rerun import RerunError, rerun
from nlsweep.execution.sweep import run_sweep

__all__ = [
    "ClusterError", "ExperimentError", "RerunError", "experiment_path", "rerun", "run_sweep",
    "start_ray",
]  # fmt: skip
