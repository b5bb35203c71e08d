"""MLflow tracking: the only module that imports mlflow.

One writer: every MLflow call happens in the sweep driver (trial metrics reach it through
Ray Tune callbacks), so a SQLite store never sees concurrent writers. Layout: experiment =
spec name; one parent run per sweep; one child run per trial (tag `mlflow.parentRunId`, so
the UI nests it) named after its swept values, with the flattened trial config as params,
metrics at step = training step (one `log_batch` per report), and the tags below.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nlsweep.tracking._sqlite_lock import sqlite_lock
from nlsweep.tracking.tags import (
    EXPERIMENT_KIND,
    MAX_PARAM_LEN,
    MAX_PARAMS_PER_BATCH,
    MAX_TAG_LEN,
    MODEL_TRAINING,
    PARENT_TAG,
    TAG_RESUMED,
    TAG_ROLE,
    TAG_TRIAL,
)
from nlsweep.tracking.view import view_tag

# mlflow itself is imported where a client is made: loading a spec (which builds the
# TrackingConfig below) or printing a dry run must not pay for it.


def _quiet() -> None:
    """MLflow's INFO lines (store creation, migrations) are noise in a sweep's output; set
    after mlflow's import, which configures its own logger."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # a progress bar per artifact download would sit on stderr above a one-line error
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def transient(e: BaseException) -> bool:
    """Whether a failed tracking call may succeed later (server away, overloaded, locked)."""
    seen = 0
    while e is not None and seen < 8:
        text = f"{type(e).__name__} {e}".lower()
        markers = ("connection", "timed out", "timeout", "max retries", "temporarily",
                   "database is locked", " 502", " 503", " 504", "bad gateway",
                   "service unavailable", "remotedisconnected", "broken pipe")  # fmt: skip
        if isinstance(e, (ConnectionError, TimeoutError)) or any(m in text for m in markers):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


FULL = ("database or disk is full", "no space left on device", "disk quota exceeded")


def disk_full(e: BaseException) -> bool:
    """Whether a failed tracking call failed because its disk is full (never transient:
    waiting does not free space)."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(m in str(e).lower() for m in FULL):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def free_space(uri: str) -> str:
    """'N MB free in FOLDER' for a local store (sqlite or a folder), else ''."""
    path = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else uri
    if "://" in path:
        return ""
    folder = Path(path).resolve().parent
    try:
        return f"{shutil.disk_usage(folder).free / 1e6:.1f} MB free in {folder}"
    except OSError:
        return ""


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message is one line."""


def check_sqlite(uri: str) -> None:
    """A SQLite store that exists must read as a sound database (sqlite's own quick_check),
    or one line naming the file and sqlite's message: never a driver's link or a traceback
    once the sweep has begun."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///") :])
    if not path.is_file() or path.stat().st_size == 0:
        return  # a new store (MLflow creates its tables)
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
            db.execute("SELECT count(*) FROM runs").fetchone()
    except sqlite3.Error as e:
        verdict = str(e)
    if verdict != "ok":
        raise TrackingError(f"tracking_uri {uri}: {path} is not a sound MLflow SQLite store "
                            f"(sqlite: {verdict.splitlines()[0][:200]}); restore it from a copy, "
                            "or give another tracking_uri")  # fmt: skip


def git_commit() -> str | None:
    """Commit of the nlsweep checkout (with '-dirty' when it has uncommitted changes)."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


@contextmanager
def _fail_fast():
    """Make an unreachable HTTP server fail in seconds rather than after minutes of retries."""
    saved = {
        k: os.environ.get(k)
        for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
    }
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "5"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _one_line(e: BaseException) -> str:
    """The error's last meaningful line (SQLAlchemy's trailing link is no cause)."""
    link = "(Background on this error at"
    text = [ln for ln in str(e).strip().splitlines() if ln.strip() and link not in ln]
    return (text[-1] if text else type(e).__name__)[:300]


def clip_tag(value) -> str:
    text = str(value)
    if len(text) <= MAX_TAG_LEN:
        return text
    marker = f"\n... [{len(text) - MAX_TAG_LEN + 40} characters cut]"
    return text[: MAX_TAG_LEN - len(marker)] + marker


def describe_store(uri: str) -> str:
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"{uri} (file {Path(uri[len('sqlite:///') :]).resolve()})"
    return uri


class Tracker:
    def __init__(self, uri: str):
        self.uri = uri
        self.experiment_id: str | None = None
        from mlflow.tracking import MlflowClient

        _quiet()
        try:
            with sqlite_lock(uri):  # one process creates and migrates a fresh store
                self.client = MlflowClient(tracking_uri=uri)
                if uri.startswith("sqlite:"):
                    self.client.search_experiments(max_results=1)
        except Exception as e:  # noqa: BLE001 - e.g. a SQLite path whose folder cannot exist
            check_sqlite(uri)  # sqlite's own words for a damaged file, rather than SQLAlchemy's
            raise TrackingError(f"tracking_uri {uri}: unusable ({_one_line(e)})") from None

    def check(self) -> None:
        """Fail now, with one line, if the store cannot be reached or written, or is a
        damaged SQLite file (checked whole: the sweep's preflight does this once)."""
        check_sqlite(self.uri)
        try:
            with _fail_fast():
                self.client.search_experiments(max_results=1)
        except Exception as e:  # noqa: BLE001 - any failure means the store is unusable
            raise TrackingError(f"tracking_uri {self.uri}: unreachable ({_one_line(e)})") from None

    def experiment(self, name: str) -> str:
        """The experiment's id (created, or restored from deletion), marked as model
        training for the MLflow UI (`EXPERIMENT_KIND`) unless someone chose another kind."""
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            self.experiment_id = self.client.create_experiment(
                name, tags={EXPERIMENT_KIND: MODEL_TRAINING}
            )
        else:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            self.experiment_id = exp.experiment_id
            if EXPERIMENT_KIND not in exp.tags:
                self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
        return self.experiment_id

    def publish_view(self, metric: str, mode: str, swept: list[str]) -> None:
        """Write the experiment's shared view (`view.view_tag`), which the runs links open."""
        key, value = view_tag(metric, mode, swept)
        self.client.set_experiment_tag(self.experiment_id, key, value)

    def start_run(
        self,
        run_name: str,
        params: dict[str, Any],
        tags: dict[str, str],
        parent_id: str | None = None,
    ) -> str:
        if parent_id:
            tags = {**tags, PARENT_TAG: parent_id}
        from mlflow.entities import Param

        tags = {k: clip_tag(v) for k, v in tags.items()}
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        run_id = run.info.run_id
        items = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=items[i : i + MAX_PARAMS_PER_BATCH])
        return run_id

    def log(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items()]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def tag(self, run_id: str, key: str, value: str) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(key, clip_tag(value))])

    def tags_batch(self, run_id: str, tags: dict[str, str]) -> None:
        """Several tags in one call that fails within seconds when the store is away."""
        from mlflow.entities import RunTag

        with _fail_fast():
            self.client.log_batch(run_id, tags=[RunTag(k, clip_tag(v)) for k, v in tags.items()])

    def end(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status=status)

    def monitor_system(self, run_id: str):
        """Start MLflow's system-metrics monitor on `run_id` (a daemon thread of this process,
        writing `system/...` metrics); returns it, for `.finish()`."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, tracking_uri=self.uri, resume_logging=True)
        monitor.start()
        return monitor

    def reopen(self, run_id: str) -> None:
        """Set a run back to RUNNING (its trial continues after a resume or a retry)."""
        self.client.update_run(run_id, status="RUNNING")

    def untag(self, run_id: str, key: str) -> None:
        if key in self.tags(run_id):
            self.client.delete_tag(run_id, key)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        """A text artifact (the run's artifact store: the server's, or the local store's)."""
        self.client.log_text(run_id, text, artifact_file)

    def log_artifacts(self, run_id: str, folder: str | Path, artifact_path: str) -> None:
        """Every file under `folder`, replacing artifacts of the same names."""
        self.client.log_artifacts(run_id, str(folder), artifact_path)

    def artifacts(self, run_id: str, path: str | None = None) -> list[str]:
        """Paths of the run's artifacts (files, recursively) under `path`."""
        out, todo = [], [path]
        while todo:
            for f in self.client.list_artifacts(run_id, todo.pop()):
                (todo if f.is_dir else out).append(f.path)
        return sorted(out)

    def download(self, run_id: str, path: str, dst: str | Path) -> str:
        return self.client.download_artifacts(run_id, path, str(dst))

    def tags(self, run_id: str) -> dict[str, str]:
        return dict(self.client.get_run(run_id).data.tags)

    def experiment_of(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.experiment_id

    def has_run(self, run_id: str) -> bool:
        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except Exception:  # noqa: BLE001 - MLflow raises its own error for unknown ids
            return False

    def children(self, parent_id: str) -> dict[str, Any]:
        """The child runs of a parent run, by their trial-id tag."""
        runs = self.client.search_runs(
            [self.client.get_run(parent_id).info.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'",
            max_results=10000,
        )
        return {r.data.tags[TAG_TRIAL]: r for r in runs if TAG_TRIAL in r.data.tags}

    def last_step(self, run_id: str, key: str) -> int:
        """The highest step logged for `key` in a run (0 when none)."""
        return max((m.step for m in self.client.get_metric_history(run_id, key)), default=0)

    def sweep_runs(self, experiment_name: str) -> list:
        """The parent runs of the sweeps logged under an experiment, newest first."""
        exp = self.client.get_experiment_by_name(experiment_name)
        if exp is None:
            return []
        return self.client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_ROLE}` "
                                       "= 'sweep'", order_by=["start_time DESC"])  # fmt: skip

    def runs(self, experiment_name: str) -> list:
        """All runs of an experiment (for tests and reports)."""
        exp = self.client.get_experiment_by_name(experiment_name)
        if exp is None:
            return []
        return self.client.search_runs([exp.experiment_id], max_results=10000)

    def trial_timings(self) -> list[tuple[dict, float]]:
        """(params, wall seconds) of every finished trial run in the store that ran in one go
        (a resumed run's time spans its interruption); an unreachable server fails in seconds."""
        with _fail_fast():
            ids = [e.experiment_id for e in self.client.search_experiments()]
            runs = self.client.search_runs(
                ids,
                filter_string=f"tags.`{TAG_ROLE}` = 'trial' and attributes.status = 'FINISHED'",
                max_results=5000,
            )
        return [
            (dict(r.data.params), (r.info.end_time - r.info.start_time) / 1000)
            for r in runs
            if r.info.end_time and TAG_RESUMED not in r.data.tags
        ]

    def history(self, run_id: str, key: str) -> list:
        return self.client.get_metric_history(run_id, key)


def publish_report(uri: str, parent_id: str, md: Path, fig_dir: Path) -> None:
    """The report beside its sweep in MLflow: `report/NAME.md` and `report/NAME/*` (figures,
    CSV), so the markdown's relative links hold in the artifact view; same names replace the
    older upload."""
    tracker = Tracker(uri)
    try:
        tracker.client.log_artifact(parent_id, str(md), "report")
        if fig_dir.is_dir():
            tracker.log_artifacts(parent_id, fig_dir, f"report/{fig_dir.name}")
    except Exception as e:  # noqa: BLE001 - the report on disk stands; say what did not
        raise TrackingError(
            f"tracking_uri {uri}: the report was written but not uploaded ({_one_line(e)})"
        ) from None
