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

A learning-rate schedule s(i) (models/optim.py) sets level l's rate to eta_l s(i - 1) when
it steps at clock i. Gradient clipping acts on each outer step's own gradient, before it is
added to what slow levels accumulated: clipping the sum instead would bound a slow level's
chunk as a whole, so a level with C_l = 32 would get 32 times less gradient than its
period's losses asked for.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch

from models.common import ConfigError, require
from models.deep_momentum import check_choice


@dataclass
class CMSConfig:
    """`cms:` section."""

    periods: dict[str, int] = field(default_factory=dict)
    """Update period C_l in outer steps for each level of the model (keys = its levels;
    unset: every level steps every outer step)."""
    lr_scaling: Literal["none", "inverse", "inverse_sqrt"] = "none"
    """Level l's learning rate: lr, lr / C_l or lr / sqrt(C_l). Under Adam, `inverse` counts
    the period twice: Adam's step size does not depend on the gradient's scale, so a level
    that steps every C_l batches already moves C_l times less often; dividing its rate by
    C_l as well makes each of those steps C_l times smaller, and a slow level with C = 256
    effectively froze in an earlier reproduction (notes, pitfall 4). It is a swept choice."""
    accumulate: Literal["sum", "mean"] = "sum"
    """How a level's gradients over its chunk combine: the notes' sum, or their mean."""
    token_periods: list[int] = field(default_factory=list)
    """hope, hope_attention: the CMS chain, one MLP block per period C_l (tokens between its
    in-context updates), e.g. [1, 4, 32, 128]; each a multiple of the one before."""
    inner_lr: float | list[float] = 1e-3
    """Inner learning rate of the chain's blocks (one value, or one per token period), per
    token of loss: a block's fast weights move by -inner_lr x the summed gradient of the
    scaled token losses of its period. (Earlier versions divided the signal by the batch's
    active tokens N; 1e-3 per token equals their 1.0 at N ~ 1000, e.g. 16 x 64.)"""
    inner_momentum: float = 0.0
    """Momentum mu of the chain's inner updates (0: plain steps)."""
    inner_optimizer: Literal["momentum", "deep_momentum"] = "momentum"
    """The chain's inner optimizer: `momentum` (M <- mu M + G, dW <- dW - lr M) or
    `deep_momentum`, whose momentum is an MLP memory trained in context on the momentum's
    own dot-product objective (models/deep_momentum.py); mu is then its forgetting."""
    deep_momentum_hidden: int = 0
    """deep_momentum: hidden units h of each fast weight's momentum memory (required)."""
    deep_momentum_lr: float = 1.0
    """deep_momentum: step size eta of the momentum memory on its objective (1: its constant
    part B follows classic momentum exactly)."""
    inner_chunk: int = 0
    """hope, hope_attention: tokens the chain reads with one set of fast weights (0: the
    fastest token period, the exact form). A larger multiple of it takes every inner gradient
    of a chunk at the fast weights of the chunk's start and applies the level steps due inside
    it at its end, in order, each with the gradients of its own tokens: fewer, larger
    segments (faster), and a prediction can lag up to inner_chunk - token_periods[0] tokens
    of inner learning. seq_len must be a multiple of it."""

    def __post_init__(self):
        tp = self.token_periods
        for i, c in enumerate(tp):
            require(
                isinstance(c, int) and c >= 1 and (i == 0 or c % tp[i - 1] == 0),
                "token_periods",
                f"positive integers, each a multiple of the one before, got {tp}",
            )
        if isinstance(self.inner_lr, list):
            require(
                len(self.inner_lr) == len(tp),
                "inner_lr",
                f"one value, or one per token period ({len(tp)}), got {self.inner_lr}",
            )
        require(all(x >= 0 for x in self.inner_lrs()), "inner_lr", f">= 0, got {self.inner_lr}")
        require(
            0 <= self.inner_momentum < 1,
            "inner_momentum",
            f"in [0, 1), got {self.inner_momentum}",
        )
        deep = check_choice(
            "inner_optimizer",
            self.inner_optimizer,
            "deep_momentum_hidden",
            self.deep_momentum_hidden,
        )
        require(
            not deep or bool(tp),
            "inner_optimizer",
            "momentum unless token_periods defines a CMS chain (deep_momentum steps its "
            "fast weights)",
        )
        require(
            self.deep_momentum_lr > 0 and (deep or self.deep_momentum_lr == 1.0),
            "deep_momentum_lr",
            f"a positive step size, set only with inner_optimizer deep_momentum, got "
            f"{self.deep_momentum_lr}",
        )
        if self.inner_chunk:
            require(
                bool(tp) and self.inner_chunk % tp[0] == 0,
                "inner_chunk",
                f"0 or a multiple of token_periods[0], got {self.inner_chunk}",
            )
        for level, c in self.periods.items():
            require(
                isinstance(c, int) and c >= 1,
                f"periods.{level}",
                f"a positive integer number of steps, got {c!r}",
            )

    def inner_lrs(self) -> list[float]:
        lr = self.inner_lr
        return (
            [float(x) for x in lr]
            if isinstance(lr, list)
            else [float(lr)] * len(self.token_periods)
        )

    def lr_factor(self, level: str) -> float:
        c = self.periods.get(level, 1)
        return {"none": 1.0, "inverse": 1.0 / c, "inverse_sqrt": 1.0 / math.sqrt(c)}[
            self.lr_scaling
        ]

    def check_levels(self, levels) -> None:
        if self.periods and set(self.periods) != set(levels):
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
        cfg: CMSConfig,
        make_optimizer: Callable[[str, list[torch.nn.Parameter], float], torch.optim.Optimizer],
        schedule: Callable[[int], float] | None = None,
        grad_clip: float = 0.0,
    ):
        """`make_optimizer(level, params, lr_factor)` builds one level's optimizer;
        `schedule(i)` scales every level's rate for the update at outer step i (0-based);
        `grad_clip` > 0 bounds the global norm of each step's gradient (`fresh_gradient`)."""
        self.params = {level: list(ps) for level, ps in level_params.items()}
        self.periods = {level: cfg.periods.get(level, 1) for level in self.params}
        self.accumulate = cfg.accumulate
        self.lr_factors = {level: cfg.lr_factor(level) for level in self.params}
        self.optimizers = {
            level: make_optimizer(level, ps, self.lr_factors[level])
            for level, ps in self.params.items()
        }
        self.base_lrs = {
            level: [g["lr"] for g in opt.param_groups] for level, opt in self.optimizers.items()
        }
        self.schedule = schedule or (lambda i: 1.0)
        self.grad_clip = grad_clip
        self.pending = {level: 0 for level in self.params}  # backward passes since last step
        self.clock = 0
        self.updates = {level: 0 for level in self.params}
        self.last_update_norm = {level: 0.0 for level in self.params}
        # clipping: steps clipped in all, and the pre-clip norms since the last `metrics()`
        self.clip = {"clipped": 0, "steps": 0, "window": 0, "window_clipped": 0,
                     "window_norm": 0.0, "max_norm": 0.0}  # fmt: skip

    def zero_grad(self) -> None:
        for ps in self.params.values():
            for p in ps:
                p.grad = None

    def flush_inputs(self, reduce=None) -> None:
        """Fold the inputs of the last forward pass into every delta-rule level's statistics,
        summed over data-parallel workers by `reduce` (see `DeltaRule.flush_inputs`)."""
        for opt in self.optimizers.values():
            if hasattr(opt, "flush_inputs"):
                opt.flush_inputs(reduce)

    @contextlib.contextmanager
    def fresh_gradient(self):
        """Around one outer step's backward pass: with `grad_clip`, the gradient that pass
        produces is clipped on its own, then added to the levels' accumulated gradients."""
        if not self.grad_clip:
            yield
            return
        held = {}
        for ps in self.params.values():
            for p in ps:
                if p.grad is not None:
                    held[p], p.grad = p.grad, None
        try:
            yield
            live = [p for ps in self.params.values() for p in ps if p.grad is not None]
            norm = float(torch.nn.utils.clip_grad_norm_(live, self.grad_clip))
            c = self.clip
            hit = norm > self.grad_clip
            c["steps"] += 1
            c["clipped"] += hit
            c["window"] += 1
            c["window_clipped"] += hit
            c["window_norm"] += norm
            c["max_norm"] = max(c["max_norm"], norm)
        finally:  # the accumulated sums survive a failed backward too
            for p, g in held.items():
                p.grad = g if p.grad is None else p.grad.add_(g)

    def lr(self, level: str) -> float:
        """Level `level`'s learning rate at the current step (its first parameter group's)."""
        return self.base_lrs[level][0] * self.schedule(max(self.clock - 1, 0))

    def due(self, level: str) -> bool:
        """Whether `level` steps at the next call of `step()`."""
        return (self.clock + 1) % self.periods[level] == 0

    @torch.no_grad()
    def step(self, read_at: int | None = None) -> list[str]:
        """Advance the clock after a backward pass; step the levels whose period divides it.
        `read_at`: the clock at which `metrics()` is next read; a level's update norm is
        measured only on its last step before then (None: on every step). Measuring costs a
        copy of the level's weights and a reduction per step; a clock-only rule keeps the
        logged values identical whatever the process or a restart."""
        self.clock += 1
        stepped = []
        for level, ps in self.params.items():
            self.pending[level] += 1
            if self.clock % self.periods[level]:
                continue
            live = [p for p in ps if p.grad is not None]
            if not live:
                raise RuntimeError(
                    f"CMS level {level!r} is due at step {self.clock} but none of its "
                    "parameters received a gradient"
                )
            if self.accumulate == "mean" and self.pending[level] > 1:
                for p in live:
                    p.grad.div_(self.pending[level])
            measure = read_at is None or self.clock + self.periods[level] > read_at
            before = [p.detach().clone() for p in live] if measure else None
            scale = self.schedule(self.clock - 1)
            for group, base in zip(self.optimizers[level].param_groups, self.base_lrs[level]):
                group["lr"] = base * scale
            self.optimizers[level].step()
            if before is not None:  # one host read for the level
                sq = torch.stack([(p - b).pow(2).sum() for p, b in zip(live, before)]).sum()
                self.last_update_norm[level] = math.sqrt(float(sq))
            for p in ps:
                p.grad = None
            self.updates[level] += 1
            self.pending[level] = 0
            stepped.append(level)
        return stepped

    def metrics(self) -> dict[str, float]:
        out = {}
        for level in self.params:
            out[f"cms/{level}/updates"] = float(self.updates[level])
            out[f"cms/{level}/update_norm"] = self.last_update_norm[level]
            out[f"cms/{level}/lr_factor"] = self.lr_factors[level]
            out[f"optim/{level}/lr"] = self.lr(level)
            extra = getattr(self.optimizers[level], "metrics", None)
            for key, value in (extra() if extra else {}).items():
                out[f"optim/{level}/{key}"] = value
        if self.grad_clip:
            c = self.clip
            out["optim/grad_norm"] = c["window_norm"] / max(c["window"], 1)  # before clipping
            out["optim/clip_rate"] = c["window_clipped"] / max(c["window"], 1)
            out["optim/clipped_steps"] = float(c["clipped"])
            c.update(window=0, window_clipped=0, window_norm=0.0)
        return out

    def warnings(self) -> dict[str, str]:
        """Configured optimizer mechanisms that never acted (name -> why)."""
        c = self.clip
        if self.grad_clip and c["steps"] and not c["clipped"]:
            return {
                "optim.grad_clip": f"never bound in {c['steps']} steps: the largest gradient "
                f"norm was {c['max_norm']:.4g} <= {self.grad_clip}"
            }
        return {}

    def state_dict(self) -> dict:
        return {
            "clock": self.clock,
            "updates": dict(self.updates),
            "pending": dict(self.pending),
            "last_update_norm": dict(self.last_update_norm),
            "clip": dict(self.clip),
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
        self.pending = {lv: int(v) for lv, v in sd["pending"].items()}
        self.last_update_norm = {lv: float(v) for lv, v in sd["last_update_norm"].items()}
        self.clip.update(sd.get("clip", {}))  # absent in checkpoints made before clipping
        for lv, opt in self.optimizers.items():
            opt.load_state_dict(sd["optimizers"][lv])
        for lv, ps in self.params.items():
            for p, g in zip(ps, sd["pending_grads"][lv]):
                p.grad = None if g is None else g.to(p.device).clone()
