"""The Ray cluster a sweep runs on: a local one started here, or the one at $RAY_ADDRESS.

Only `ray` itself is imported here (never `ray.tune`); the cluster's resources are what
`nlsweep.resources.check_resources` compares the spec's request against.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import ray

from nlsweep.resources import local_resources


def start_ray() -> tuple[bool, dict[str, float], str]:
    """Start a local Ray (or join $RAY_ADDRESS); returns (started_here, resources, where)."""
    address = os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return False, ray.cluster_resources(), "the running Ray instance"
    if address:
        import models
        import nlsweep

        env = {k: os.environ[k] for k in ("NLSWEEP_DATA",) if k in os.environ}
        ray.init(
            address=address,
            logging_level=logging.WARNING,
            runtime_env={"py_modules": [nlsweep, models], "env_vars": env},
        )
        return True, ray.cluster_resources(), f"the Ray cluster at {address}"
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
    return True, ray.cluster_resources(), "this machine"
