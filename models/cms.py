"""Continuum Memory System with step periods: per-level optimizers on accumulated gradients.

Notation (shared notes §1, "step periods" reading)
    i          outer step counter (the level clock), 1 after the first batch
    C_l        update period of level l (`cms.periods[l]`)
    g_l(t)     gradient of the training loss w.r.t. level l's parameters at step t
    theta_l <- theta_l - sum_{t in chunk} eta_l g_l(t)   if i % C_l == 0, else unchanged

Gradients of a level accumulate in `.grad` (PyTorch sums successive backward passes) until
its step; the level's own optimizer then steps once on that sum and its gradients are
cleared. Adam is invariant to gradient scale, so summing rather than averaging does not
change its step size; with SGD the sum reproduces the notes' formula exactly.
Counters (`updates`, `last_update_norm`) prove each level acted (notes, pitfall 3).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from models.common import ConfigError, require


@dataclass
class CMSConfig:
    """`cms:` section."""

    periods: dict[str, int] = field(default_factory=lambda: {"fast": 1, "medium": 1, "slow": 1})
    """Update period C_l in outer steps for each level of the model (keys = its levels)."""

    def __post_init__(self):
        for level, c in self.periods.items():
            require(
                isinstance(c, int) and c >= 1,
                f"periods.{level}",
                f"a positive integer number of steps, got {c!r}",
            )

    def check_levels(self, levels) -> None:
        if set(self.periods) != set(levels):
            raise ConfigError(
                "periods",
                f"one period for each of the model's levels {list(levels)}, "
                f"got {sorted(self.periods)}",
            )


class CMSOptimizer:
    """One optimizer per level; level l steps every C_l outer steps."""

    def __init__(
        self,
        level_params: Mapping[str, list[torch.nn.Parameter]],
        periods: Mapping[str, int],
        make_optimizer: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
    ):
        self.params = {level: list(ps) for level, ps in level_params.items()}
        self.periods = dict(periods)
        self.optimizers = {level: make_optimizer(ps) for level, ps in self.params.items()}
        self.clock = 0
        self.updates = {level: 0 for level in self.params}
        self.last_update_norm = {level: 0.0 for level in self.params}

    def zero_grad(self) -> None:
        for ps in self.params.values():
            for p in ps:
                p.grad = None

    def due(self, level: str) -> bool:
        """Whether `level` steps at the next call of `step()`."""
        return (self.clock + 1) % self.periods[level] == 0

    @torch.no_grad()
    def step(self) -> list[str]:
        """Advance the clock after a backward pass; step the levels whose period divides it."""
        self.clock += 1
        stepped = []
        for level, ps in self.params.items():
            if self.clock % self.periods[level]:
                continue
            live = [p for p in ps if p.grad is not None]
            if not live:
                raise RuntimeError(
                    f"CMS level {level!r} is due at step {self.clock} but none of its "
                    "parameters received a gradient"
                )
            before = [p.detach().clone() for p in live]
            self.optimizers[level].step()
            sq = sum(float((p - b).pow(2).sum()) for p, b in zip(live, before))
            self.last_update_norm[level] = math.sqrt(sq)
            for p in ps:
                p.grad = None
            self.updates[level] += 1
            stepped.append(level)
        return stepped

    def metrics(self) -> dict[str, float]:
        out = {}
        for level in self.params:
            out[f"cms/{level}/updates"] = float(self.updates[level])
            out[f"cms/{level}/update_norm"] = self.last_update_norm[level]
        return out

    def state_dict(self) -> dict:
        return {
            "clock": self.clock,
            "updates": dict(self.updates),
            "last_update_norm": dict(self.last_update_norm),
            # A snapshot, not live references: optimizers update their moments in place.
            "optimizers": {
                lv: copy.deepcopy(opt.state_dict()) for lv, opt in self.optimizers.items()
            },
            # Gradients accumulated towards a level's next step are training state too
            # (notes, pitfall 10): without them a resumed slow level would lose a chunk.
            "pending_grads": {
                lv: [None if p.grad is None else p.grad.detach().clone() for p in ps]
                for lv, ps in self.params.items()
            },
        }

    def load_state_dict(self, sd: dict) -> None:
        self.clock = int(sd["clock"])
        self.updates = {lv: int(v) for lv, v in sd["updates"].items()}
        self.last_update_norm = {lv: float(v) for lv, v in sd["last_update_norm"].items()}
        for lv, opt in self.optimizers.items():
            opt.load_state_dict(sd["optimizers"][lv])
        for lv, ps in self.params.items():
            for p, g in zip(ps, sd["pending_grads"][lv]):
                p.grad = None if g is None else g.to(p.device).clone()
