"""What each trial asks for (`resources:`), and what this machine or a Ray cluster offers."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from models.errors import ConfigError, require


@dataclass
class Resources:
    """`resources:` section: what each trial is given."""

    cpu: float = 1.0
    """CPUs of each worker of the trial."""
    gpu: float = 0.0
    """GPU of each worker: a fraction (0.25: four workers share a GPU) or 1."""
    workers: int = 1
    """Data-parallel workers of one trial (Ray Train, DDP): each trains B/workers rows of
    every batch on its own `cpu` and `gpu`; several GPUs for one trial = several workers."""

    def __post_init__(self):
        require(self.cpu > 0, "cpu", f"a positive number of CPUs, got {self.cpu}")
        require(self.gpu >= 0, "gpu", f">= 0, got {self.gpu}")
        require(
            self.gpu <= 1,
            "gpu",
            f"at most 1 per worker, got {self.gpu:g}; for {self.gpu:g} GPUs set "
            f"resources.workers: {math.ceil(self.gpu)} with gpu: 1 (one data-parallel worker each)",
        )
        require(
            isinstance(self.workers, int) and not isinstance(self.workers, bool)
            and self.workers >= 1,
            "workers",
            f"a positive integer, got {self.workers!r}",
        )  # fmt: skip


def local_resources() -> dict[str, float]:
    """CPUs and GPUs of this machine (what a local Ray instance would offer)."""
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - a broken CUDA install means no usable GPU
        gpus = 0
    return {"CPU": float(os.cpu_count() or 1), "GPU": float(gpus)}


def check_resources(res: Resources, available: dict[str, float], where: str) -> None:
    """Raise ConfigError when a trial asks for more than the cluster has."""
    if res.gpu > 0 and available.get("GPU", 0) == 0:
        raise ConfigError("resources.gpu", f"0: {where} has no GPU (asked for {res.gpu})")
    if res.gpu > available.get("GPU", 0):
        raise ConfigError(
            "resources.gpu", f"at most {available['GPU']:g} GPUs ({where}), got {res.gpu:g}"
        )
    if res.cpu > available.get("CPU", 0):
        raise ConfigError(
            "resources.cpu", f"at most {available.get('CPU', 0):g} CPUs ({where}), got {res.cpu:g}"
        )
    for key, per in (("CPU", res.cpu), ("GPU", res.gpu)):
        if per and res.workers * per > available.get(key, 0):
            raise ConfigError(
                "resources.workers",
                f"at most {int(available.get(key, 0) // per)}: {res.workers} workers x {per:g} "
                f"{key}s exceed the {available.get(key, 0):g} of {where}",
            )
