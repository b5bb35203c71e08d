"""`tracking:`, the typed config of what reaches MLflow, and the tracking URI rules (the
default store, relative paths made absolute, bounded HTTP calls)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from models.errors import require

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def absolute_uri(uri: str) -> str:
    """A tracking URI naming a relative local path (sqlite:///mlflow.db, ./mlruns) made
    absolute, so that the store is the same whatever folder a later command runs from."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        rest, sep, query = uri[len("sqlite:///") :].partition("?")
        if rest and rest != ":memory:":
            return f"sqlite:///{Path(rest).expanduser().resolve()}{sep}{query}"
    elif "://" not in uri and not uri.startswith("file:"):
        return str(Path(uri).expanduser().resolve())
    return uri


HTTP_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
"""Every HTTP call to a tracking server ends within about 90 s (MLflow's defaults retry for
about 4 minutes per call); a longer outage is bridged by buffering (`nlsweep.execution.runlog`)."""


@dataclass
class TrackingConfig:
    """`tracking:` section: what reaches MLflow besides metrics, and how long it may be away."""

    log_checkpoints: Literal["none", "final"] = "none"
    """final: each trial's last checkpoint becomes an artifact of its run (`checkpoint/`)."""
    outage_s: float = 600.0
    """Seconds the tracking store may be unreachable mid-sweep: writes wait in order in a
    buffer meanwhile; past this the sweep stops (trials keep their checkpoints, the buffer
    is kept beside the experiment) and `--resume` writes the buffer first."""

    system_metrics: Literal["auto", "on", "off"] = "auto"
    """MLflow's system metrics of the driver's machine (CPU, memory, disk, network, and with
    the `gpu` extra (nvidia-ml-py) each GPU's utilisation and memory) on the sweep's parent
    run, every 10 s (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL). auto: on unless the sweep
    runs through Ray Client, whose driver is not where the trials run."""

    def __post_init__(self):
        require(
            self.system_metrics in ("auto", "on", "off"),
            "system_metrics",
            f"auto, on or off, got {self.system_metrics!r}",
        )
        require(
            self.log_checkpoints in ("none", "final"),
            "log_checkpoints",
            f"none or final, got {self.log_checkpoints!r}",
        )
        require(self.outage_s > 0, "outage_s", f"a positive number of seconds, got {self.outage_s}")


def bound_http_calls() -> None:
    """Bound every MLflow HTTP call of this process (and, through the shipped environment, of
    the cluster's); settings the user made win."""
    for k, v in HTTP_BOUNDS.items():
        os.environ.setdefault(k, v)
