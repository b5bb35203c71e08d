"""Local surprise objective: each level regresses its output onto its local error signal.

Notation (Nested Learning: backpropagation as associative memory; shared notes §1, pitfall 5)
    L        main loss: mean cross-entropy over the N = B*T predicted tokens
    y_l      output of level l, (B, T, d); y_{l,t} its vector at token t
    u_l      = dL/dy_l, the level's local error ("surprise"); O(1/N) for a mean loss
    s        signal scale: 1 (`none`, the faithful form) or N (`tokens`: per-token O(1))
    c        per-token clip: clip(v) = v min(1, c / ||v||), s u_{l,t} shrunk to norm c when
             longer (c = 0: off)
    aux_l    = w_l * (1/N) sum_t || y_{l,t} - clip(s u_{l,t}) ||^2
    loss     = L + sum_l aux_l      on every `every_n`-th step; L alone on the others
Target modes: `detached` takes u_l from autograd.grad without create_graph, so no second-order
graph exists and aux_l's gradient flows through y_l only; `differentiable` builds that graph
(create_graph=True) and the gradient also flows through u_l, the clip included: the factor
c / ||s u_{l,t}|| is differentiated like the rest of the objective (tested against autograd of
the formula above). With s = 1 the signal is about
1/N of ||y_l||, so aux_l is close to w_l ||y_l||^2 / N: an activation penalty. The logged norms
of s u_l and y_l show which regime a run is in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from models.common import ConfigError, require


@dataclass
class SurpriseConfig:
    """`surprise:` section; empty weights = off."""

    weights: dict[str, float] = field(default_factory=dict)
    """w_l per level (levels of the model); 0 leaves a level out."""
    target: Literal["detached", "differentiable"] = "detached"
    signal_scale: Literal["none", "tokens"] = "none"
    every_n: int = 1
    """Add the objective on every n-th step only."""
    clip: float = 0.0
    """Maximum norm of each token's (scaled) signal vector; 0 = no clip. With a differentiable
    target the clip's factor c / ||s u|| is differentiated too (the objective as written)."""

    def __post_init__(self):
        for level, w in self.weights.items():
            require(w >= 0, f"weights.{level}", f">= 0, got {w}")
        require(self.every_n >= 1, "every_n", f"a positive integer, got {self.every_n}")
        require(self.clip >= 0, "clip", f">= 0 (0 = off), got {self.clip}")

    @property
    def active(self) -> list[str]:
        return [level for level, w in self.weights.items() if w > 0]

    def check_levels(self, levels) -> None:
        unknown = sorted(set(self.weights) - set(levels))
        if unknown:
            raise ConfigError(f"weights.{unknown[0]}", f"a level of the model: {list(levels)}")


def _signal(u: torch.Tensor, cfg: SurpriseConfig):
    """(scaled and clipped signal, per-token norms before the clip, clip rate)."""
    n_tokens = u.shape[0] * u.shape[1]
    signal = u * n_tokens if cfg.signal_scale == "tokens" else u
    # not detached: with a differentiable target the clip factor is part of the objective
    norms = signal.norm(dim=-1, keepdim=True)
    clipped = 0.0
    if cfg.clip > 0:
        over = norms.detach() > cfg.clip
        clipped = float(over.float().mean())
        signal = torch.where(over, signal * (cfg.clip / norms.clamp_min(1e-30)), signal)
    return signal, norms.detach(), clipped


def _stats(level: str, aux, norms, y, clipped) -> dict[str, float]:
    return {
        f"surprise/{level}/aux": float(aux.detach()),
        f"surprise/{level}/signal_norm": float(norms.mean()),
        f"surprise/{level}/output_norm": float(y.detach().norm(dim=-1).mean()),
        f"surprise/{level}/clip_rate": clipped,
    }


def surprise_loss(
    loss: torch.Tensor, outputs: dict[str, torch.Tensor], cfg: SurpriseConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """sum_l aux_l for the active levels, and per-level statistics to log."""
    levels = cfg.active
    ys = [outputs[level] for level in levels]
    differentiable = cfg.target == "differentiable"
    # Runs only the graph above the lowest active level (never the recurrence below it).
    grads = torch.autograd.grad(loss, ys, retain_graph=True, create_graph=differentiable)
    total = loss.new_zeros(())
    stats: dict[str, float] = {}
    for level, y, u in zip(levels, ys, grads):
        signal, norms, clipped = _signal(u, cfg)
        aux = cfg.weights[level] * (y - signal).pow(2).sum(-1).mean()
        total = total + aux
        stats.update(_stats(level, aux, norms, y, clipped))
    return total, stats


def surprise_backward(
    loss: torch.Tensor, outputs: dict[str, torch.Tensor], cfg: SurpriseConfig
) -> dict[str, float]:
    """Backpropagate loss + sum_l aux_l into the parameters' .grad; return the statistics.

    One detached level takes a single backward pass: no other aux term sits above y_l, so
    the gradient arriving at y_l is exactly u_l = dL/dy_l, and a hook adds aux_l's own
    gradient, 2 w_l (y_l - s u_l) / N, on the way down. Several levels need u_l free of the
    higher levels' aux gradients, so they take `surprise_loss`'s extra partial pass.
    """
    levels = cfg.active
    if cfg.target == "differentiable" or len(levels) != 1:
        aux, stats = surprise_loss(loss, outputs, cfg)
        (loss + aux).backward()
        return stats
    level, y = levels[0], outputs[levels[0]]
    w, y_value, stats = cfg.weights[level], y.detach(), {}

    def add_aux_gradient(u: torch.Tensor) -> torch.Tensor:
        signal, norms, clipped = _signal(u, cfg)
        diff = y_value - signal
        stats.update(_stats(level, w * diff.pow(2).sum(-1).mean(), norms, y_value, clipped))
        return u + (2 * w / (y.shape[0] * y.shape[1])) * diff

    y.register_hook(add_aux_gradient)
    loss.backward()
    return stats
