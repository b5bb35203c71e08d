"""Optimizer configs and construction for the outer (slow-weight) optimization.

Notation
    theta      a parameter tensor;  g = dL/dtheta (summed over the accumulated steps)
    sgd:       v <- mu v + g;  theta <- theta - lr (v + wd theta)      (mu = momentum)
    adam/adamw: torch.optim.Adam / AdamW with (beta1, beta2, eps, weight_decay)
    delta_sgd / delta_adam: the delta rule, W <- W - alpha W (X^T X / N) - lr D (delta.py)
Each CMS level gets its own optimizer instance built from this config (`models/cms.py`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch

from models.common import require
from models.delta import DeltaRule


@dataclass
class OptimConfig:
    """`optim:` section: the outer optimizer applied to every CMS level."""

    kind: Literal["adam", "adamw", "sgd", "delta_sgd", "delta_adam"] = "adam"
    """delta_sgd / delta_adam: the delta rule (models/delta.py) on top of SGD / Adam."""
    lr: float = 3e-3
    """Learning rate of every level (before any CMS rule)."""
    beta1: float = 0.9
    """Adam/AdamW first-moment decay."""
    beta2: float = 0.999
    """Adam/AdamW second-moment decay."""
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.0
    """Heavy-ball momentum; sgd and delta_sgd only (raises for other kinds, not ignored)."""
    decay_rate: float = 0.0
    """alpha of the delta rule, W <- W - alpha W (X^T X / N) - lr D; delta kinds only."""

    def __post_init__(self):
        require(self.lr > 0, "lr", f"a positive number, got {self.lr}")
        require(0 <= self.beta1 < 1, "beta1", f"a value in [0, 1), got {self.beta1}")
        require(0 <= self.beta2 < 1, "beta2", f"a value in [0, 1), got {self.beta2}")
        require(self.eps > 0, "eps", f"a positive number, got {self.eps}")
        require(self.weight_decay >= 0, "weight_decay", f">= 0, got {self.weight_decay}")
        require(0 <= self.momentum < 1, "momentum", f"a value in [0, 1), got {self.momentum}")
        require(
            self.momentum == 0 or self.kind in ("sgd", "delta_sgd"),
            "momentum",
            f"0 unless kind is sgd or delta_sgd (kind {self.kind} would ignore it)",
        )
        delta = self.kind.startswith("delta_")
        require(self.decay_rate >= 0, "decay_rate", f">= 0, got {self.decay_rate}")
        require(
            self.decay_rate == 0 or delta,
            "decay_rate",
            f"0 unless kind is delta_sgd or delta_adam (kind {self.kind} would ignore it)",
        )
        require(
            self.weight_decay == 0 or not delta,
            "weight_decay",
            f"0 with {self.kind} (its decay is the delta rule's decay_rate)",
        )


def build_optimizer(
    params: Iterable[torch.nn.Parameter], cfg: OptimConfig, lr_factor=1.0, modules=()
):
    """One level's optimizer; `lr_factor` is the CMS learning-rate rule's scale and
    `modules` the level's modules, whose layer inputs the delta rule captures."""
    params, lr = list(params), cfg.lr * lr_factor
    if cfg.kind.startswith("delta_"):
        return DeltaRule(
            params, modules, kind=cfg.kind[len("delta_"):], lr=lr, decay_rate=cfg.decay_rate,
            momentum=cfg.momentum, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
        )  # fmt: skip
    if cfg.kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.Adam if cfg.kind == "adam" else torch.optim.AdamW
    return cls(
        params, lr=lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay
    )
