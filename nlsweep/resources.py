"""What each trial asks for (`resources:`), and what this machine or a Ray cluster offers."""

from __future__ import annotations

import os
from dataclasses import dataclass

from models.common import ConfigError, require


@dataclass
class Resources:
    """`resources:` section: what each trial is given."""

    cpu: float = 1.0
    gpu: float = 0.0
    """Fractional (0.25: four trials share a GPU) or whole (1, 2)."""

    def __post_init__(self):
        require(self.cpu > 0, "cpu", f"a positive number of CPUs, got {self.cpu}")
        require(self.gpu >= 0, "gpu", f">= 0, got {self.gpu}")
        require(
            self.gpu <= 1 or float(self.gpu).is_integer(),
            "gpu",
            f"a fraction of one GPU or a whole number of GPUs, got {self.gpu}",
        )


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
