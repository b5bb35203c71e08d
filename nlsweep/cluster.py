"""The Ray cluster a sweep runs on: a local one started here, or the one at $RAY_ADDRESS.

$RAY_ADDRESS takes Ray's two forms: `HOST:PORT` (this driver runs on a node of the cluster
and joins it) and `ray://HOST:PORT` (Ray Client: the driver may be anywhere; Tune then runs
the experiment itself in an actor on the head node). Either way the cluster's workers need
only the declared dependencies: this driver ships its own `nlsweep` and `models` packages
to them through Ray's `runtime_env` (`py_modules`), together with the environment variables
the trials and the tracking callback read (corpora folder, MLflow and object-store
settings), so every node runs the code the driver validated.

Only `ray` itself is imported here (never `ray.tune`); the cluster's resources are what
`nlsweep.resources.check_resources` compares the spec's request against.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import ray

from nlsweep.resources import local_resources

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


def runtime_env() -> dict:
    """What every worker of a remote cluster gets: this driver's packages and settings.

    Paths, not module objects: under Ray Client the runtime env is pickled with the job."""
    root = Path(__file__).resolve().parent.parent
    return {
        "py_modules": [str(root / "nlsweep"), str(root / "models")],
        "excludes": ["__pycache__", "*.pyc"],
        "env_vars": shipped_env(),
    }


def _alive_nodes() -> int:
    return sum(1 for n in ray.nodes() if n.get("Alive"))


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]


def join_cluster(address: str) -> Cluster:
    client = address.startswith("ray://")
    if client:
        try:
            import grpc  # noqa: F401 - Ray Client's transport, from the ray[client] extra
        except ImportError:
            raise ClusterError(
                f"RAY_ADDRESS={address}: Ray Client needs the ray[client] extra "
                '(pip install "ray[client]")'
            ) from None
    try:
        ray.init(address=address, logging_level=logging.WARNING, runtime_env=runtime_env())
    except Exception as e:  # noqa: BLE001 - refused, unreachable, or a token mismatch
        hint = ""
        if "auth" in str(e).lower() or "token" in str(e).lower():
            hint = " (token authentication: set RAY_AUTH_MODE=token and the cluster's token)"
        raise ClusterError(
            f"RAY_ADDRESS={address}: cannot connect ({_one_line(e)}){hint}"
        ) from None
    return Cluster(True, ray.cluster_resources(), f"the Ray cluster at {address}",
                   _alive_nodes(), client)  # fmt: skip


def start_ray() -> Cluster:
    """Start a local Ray (or join $RAY_ADDRESS)."""
    address = os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return Cluster(False, ray.cluster_resources(), "the running Ray instance", _alive_nodes())
    if address:
        return join_cluster(address)
    local = local_resources()
    # Workers must run the code the driver validated: an installed copy elsewhere on the
    # path (another checkout's editable install, say) would otherwise win in the workers.
    root = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH", "")) if p
    )  # a local Ray inherits the driver's environment; a runtime_env would cost ~10 s
    ray.init(
        num_cpus=int(local["CPU"]),
        num_gpus=int(local["GPU"]),
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=True,
    )
    return Cluster(True, ray.cluster_resources(), "this machine", 1)
