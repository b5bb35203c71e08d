"""The Ray cluster a sweep runs on: a local one started here, or the one at $RAY_ADDRESS.

$RAY_ADDRESS takes Ray's two forms: `HOST:PORT` (this driver runs on a node of the cluster
and joins it) and `ray://HOST:PORT` (Ray Client: the driver may be anywhere; Tune then runs
the experiment itself in an actor on the head node). Either way the cluster's workers need
only the declared dependencies: this driver ships its own `nlsweep` and `models` packages
to them through Ray's `runtime_env` (`py_modules`), together with the environment variables
the trials and the tracking callback read (corpora folder, MLflow and object-store
settings), so every node runs the code the driver validated.

Only `ray` itself is imported here (never `ray.tune`); the cluster's resources are what
`nlsweep.config.resources.check_resources` compares the spec's request against.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import ray

from nlsweep.config.resources import local_resources

CONNECT_TIMEOUT_S = 5.0
SHIPPED_ENV_PREFIXES = ("NLSWEEP_", "MLFLOW_", "AWS_")
"""Environment variables forwarded to the cluster's workers: the corpora folder, the MLflow
client's settings and credentials, and the object store's endpoint and credentials (pyarrow,
and so Ray's storage layer, read these on every node)."""


class ClusterError(RuntimeError):
    """The cluster at $RAY_ADDRESS cannot be used; the message is one line."""


@dataclass
class Cluster:
    started_here: bool
    resources: dict[str, float]
    where: str
    nodes: int
    """Alive nodes when the sweep started."""
    client: bool = False
    """Connected through Ray Client (`ray://`): Tune's experiment runs on the head node."""


def shipped_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(SHIPPED_ENV_PREFIXES)}


def runtime_env(plugins: list[str] | tuple = ()) -> dict:
    """What every worker of a remote cluster gets: this driver's packages and settings, and
    the spec's plugins that are files or folders (an installed plugin is the nodes' own).

    Paths, not module objects: under Ray Client the runtime env is pickled with the job."""
    root = Path(__file__).resolve().parents[2]  # the checkout (or site-packages) above nlsweep/
    return {
        "py_modules": [str(root / "nlsweep"), str(root / "models"), *map(str, plugins)],
        "excludes": ["__pycache__", "*.pyc"],
        "env_vars": shipped_env(),
    }


def _alive_nodes() -> int:
    return sum(1 for n in ray.nodes() if n.get("Alive"))


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]


def _answers(address: str, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """None when something accepts TCP connections at the address, else why not. Ray itself
    keeps retrying an address where nothing listens, for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return None
    except ValueError:
        return "expected HOST:PORT or ray://HOST:PORT"
    except OSError as e:
        return f"nothing answers there: {e.strerror or type(e).__name__}"


def join_cluster(address: str, plugins: list[str] | tuple = ()) -> Cluster:
    client = address.startswith("ray://")
    problem = _answers(address)
    if problem:
        raise ClusterError(f"RAY_ADDRESS={address}: cannot connect ({problem})")
    if client:
        try:
            import grpc  # noqa: F401 - Ray Client's transport, from the ray[client] extra
        except ImportError:
            raise ClusterError(
                f"RAY_ADDRESS={address}: Ray Client needs the ray[client] extra "
                '(pip install "ray[client]")'
            ) from None
    try:
        ray.init(address=address, logging_level=logging.WARNING, runtime_env=runtime_env(plugins))
    except Exception as e:  # noqa: BLE001 - refused, unreachable, or a token mismatch
        # Something answered (checked above), yet Ray could not join: with token
        # authentication on by default, a missing or wrong token is the usual cause.
        hint = (" (it answers, so check the cluster's token: RAY_AUTH_TOKEN or "
                "RAY_AUTH_TOKEN_PATH, with RAY_AUTH_MODE=token; or its Ray version)")  # fmt: skip
        raise ClusterError(
            f"RAY_ADDRESS={address}: cannot connect ({_one_line(e)}){hint}"
        ) from None
    return Cluster(True, ray.cluster_resources(), f"the Ray cluster at {address}",
                   _alive_nodes(), client)  # fmt: skip


def start_ray(plugins: list[str] | tuple = ()) -> Cluster:
    """Start a local Ray (or join $RAY_ADDRESS, shipping the `plugins` files and folders; a
    local Ray's workers find them on the PYTHONPATH that loading them set)."""
    address = os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return Cluster(False, ray.cluster_resources(), "the running Ray instance", _alive_nodes())
    if address:
        return join_cluster(address, plugins)
    local = local_resources()
    # Workers must run the code the driver validated: an installed copy elsewhere on the
    # path (another checkout's editable install, say) would otherwise win in the workers.
    root = str(Path(__file__).resolve().parents[2])
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH", "")) if p
    )  # a local Ray inherits the driver's environment; a runtime_env would cost ~10 s
    stopped = stop_leftovers()
    if stopped:
        print(
            f"stopped {stopped} leftover Ray processes of an earlier sweep whose driver was killed"
        )
    ray.init(
        # "local": a new instance even when `ray start` left one running on this machine
        # (Ray would join that one, and refuse num_cpus for it).
        address="local",
        num_cpus=int(local["CPU"]),
        num_gpus=int(local["GPU"]),
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=True,
    )
    record_local_instance()
    return Cluster(True, ray.cluster_resources(), "this machine", 1)


# -- what a killed driver leaves behind --------------------------------------------------------
# Ray's dashboard and runtime-env agents outlive a driver killed with SIGKILL (they ignore
# SIGTERM; one keeps listening). Each local instance nlsweep starts is recorded in this user's
# state folder: the driver and the processes Ray started, each with its start time (a reused
# pid never matches). The next local start stops those of records whose driver is gone.
# The raylet starts its agents on its own schedule, after `ray.init` may have returned (on a
# loaded machine, seconds after), so the record is kept up to date while the instance runs.

RECORD_EVERY_S = 2.0
_recording = {"generation": 0}
_record_lock = threading.Lock()


def _records() -> Path:
    from nlsweep.execution.seal import state_dir

    return state_dir() / "ray"


def _ident(p) -> dict:
    return {"pid": p.pid, "started": p.create_time()}


def _same(ident: dict):
    """The process `ident` names, if it still runs (same pid and start time), else None."""
    import psutil

    try:
        p = psutil.Process(int(ident["pid"]))
        if abs(p.create_time() - float(ident["started"])) < 0.01 and p.status() != "zombie":
            return p
    except (psutil.Error, KeyError, ValueError, TypeError):
        pass
    return None


def _write_record(path: Path, known: list[dict]) -> list[dict]:
    """Add this driver's current descendants to `known` and write the record; the new list."""
    import psutil

    me = psutil.Process()
    seen = {(d["pid"], d["started"]) for d in known}
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            ident = _ident(child)
            if (ident["pid"], ident["started"]) not in seen:
                known = [*known, ident]
    with _record_lock:
        tmp = path.with_suffix(".part")
        tmp.write_text(json.dumps({"driver": _ident(me), "processes": known}))
        tmp.replace(path)
    return known


def record_local_instance() -> None:
    """Record this driver's local instance, and keep the record current while Ray runs."""
    import psutil

    folder = _records()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{psutil.Process().pid}.json"
    known = _write_record(path, [])
    atexit.register(lambda: path.unlink(missing_ok=True))
    _recording["generation"] += 1
    generation = _recording["generation"]

    def keep_recording(known=known):
        # ends with the instance (shutdown, or a newer instance's record replaces this one)
        while _recording["generation"] == generation and ray.is_initialized():
            time.sleep(RECORD_EVERY_S)
            if not path.exists() or _recording["generation"] != generation:
                return
            with contextlib.suppress(OSError):
                known = _write_record(path, known)

    threading.Thread(target=keep_recording, name="nlsweep-ray-record", daemon=True).start()


def stop_leftovers() -> int:
    """SIGKILL the recorded processes of local instances whose driver is gone; their count."""
    stopped = 0
    for path in sorted(_records().glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            continue
        if _same(record.get("driver", {})) is not None:
            continue  # another sweep, still running
        for ident in record.get("processes", []):
            p = _same(ident)
            if p is not None:
                with contextlib.suppress(Exception):
                    p.kill()
                    stopped += 1
        path.unlink(missing_ok=True)
    return stopped
