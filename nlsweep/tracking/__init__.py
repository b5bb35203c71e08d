"""Tracking: every MLflow call (the only package that imports mlflow), the tags nlsweep
writes, the read side that turns a sweep's runs into plain data, the view the MLflow UI
opens on and the lock that creates a SQLite store once. mlflow itself loads only when a
client is made."""

from nlsweep.tracking.config import (
    DEFAULT_TRACKING_URI,
    TrackingConfig,
    absolute_uri,
    bound_http_calls,
)
from nlsweep.tracking.read import RunData, SweepData, read_sweep
from nlsweep.tracking.store import (
    Tracker,
    TrackingError,
    publish_report,
)
from nlsweep.tracking.tags import LOCAL_UI, PARENT_TAG, TAG_ROLE, TAG_TRIAL
from nlsweep.tracking.view import best_key, objective_first, run_link, ui_command, ui_links

__all__ = [
    "DEFAULT_TRACKING_URI", "LOCAL_UI", "PARENT_TAG", "TAG_ROLE", "TAG_TRIAL", "RunData",
    "SweepData", "Tracker", "TrackingConfig", "TrackingError", "absolute_uri", "best_key",
    "bound_http_calls", "objective_first", "publish_report", "read_sweep", "run_link",
    "ui_command", "ui_links",
]  # fmt: skip
