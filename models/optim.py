"""Optimizer configs and construction for the outer (slow-weight) optimization.

Notation
    theta      a parameter tensor;  g = dL/dtheta (summed over the accumulated steps)
    sgd:       v <- mu v + g;  theta <- theta - lr (v + wd theta)      (mu = momentum)
    adam/adamw: torch.optim.Adam / AdamW with (beta1, beta2, eps, weight_decay), torch's
               fused kernel on CPU and CUDA
    delta_sgd / delta_adam: the delta rule, W <- W - alpha W (X^T X / N) - lr D (delta.py)
    muon:      torch.optim.Muon on the hidden weight matrices M (2-D, neither an embedding
               table nor the output projection to the vocabulary), AdamW on the rest:
               B <- mu B + (1 - mu) g;  O = NS_5((1 - mu) g + mu B), mu = 0.95 (NS_5: five
               quintic Newton-Schulz steps, in bfloat16, orthogonalizing the Nesterov update);
               M <- M (1 - muon_lr wd) - muon_lr sqrt(max(1, rows/cols)) O
    wd         applies to matrices (ndim >= 2: linear weights, embeddings) only; biases and
               norm gains get none, as in GPT-2 / nanoGPT, since shrinking them is no prior
    lr(i)      the rate of the update made at outer step i (0-based), with W warmup steps,
               S decay steps and floor m:  lr (i+1)/(W+1) for i < W;  m for i >= S;  else
               m + (lr - m) c(r), r = (i - W)/(S - W), c = (1 + cos(pi r))/2 (cosine) or
               1 - r (linear) or 1 (constant). The CMS rule's factor scales lr and m alike;
               the delta rule's alpha is not scheduled.
    clip       the global L2 norm of each outer step's fresh gradient (all levels together)
               is scaled down to `grad_clip` when it exceeds it, before it joins a slow
               level's accumulated sum (models/cms.py)
Each CMS level gets its own optimizer instance built from this config (`models/cms.py`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch

from models.common import require
from models.delta import DeltaRule
from models.registry import RegistryError


@dataclass
class OptimConfig:
    """`optim:` section: the outer optimizer applied to every CMS level."""

    kind: str = "adam"
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
    muon_lr: float = 0.0
    """Muon's learning rate for the hidden matrices; kind muon only, where it is required
    (`lr` is then AdamW's, for embeddings, the output layer, biases and gains)."""
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    """Learning rate over the run after warmup: constant, or a cosine or linear decay from
    lr to min_lr over decay_steps."""
    warmup_steps: int = 0
    """Outer steps of linear warmup, lr (i+1)/(W+1) at step i, before the schedule."""
    min_lr: float = 0.0
    """Floor of a decaying schedule, reached at decay_steps and kept after (at most lr)."""
    decay_steps: int = 0
    """Step at which a decaying schedule reaches min_lr; 0: the trial's train.steps."""
    grad_clip: float = 0.0
    """Largest global L2 norm of an outer step's gradient (0: no clipping); the clip rate
    is logged as optim/clip_rate."""

    def __post_init__(self):
        require(self.lr > 0, "lr", f"a positive number, got {self.lr}")
        require(0 <= self.beta1 < 1, "beta1", f"a value in [0, 1), got {self.beta1}")
        require(0 <= self.beta2 < 1, "beta2", f"a value in [0, 1), got {self.beta2}")
        require(self.eps > 0, "eps", f"a positive number, got {self.eps}")
        require(self.weight_decay >= 0, "weight_decay", f">= 0, got {self.weight_decay}")
        require(0 <= self.momentum < 1, "momentum", f"a value in [0, 1), got {self.momentum}")
        require(self.decay_rate >= 0, "decay_rate", f">= 0, got {self.decay_rate}")
        require(self.muon_lr >= 0, "muon_lr", f">= 0, got {self.muon_lr}")
        _check_kind(self)  # a registered kind, and no field set that it would ignore
        delta = self.kind.startswith("delta_")
        require(
            self.weight_decay == 0 or not delta,
            "weight_decay",
            f"0 with {self.kind} (its decay is the delta rule's decay_rate)",
        )
        require(
            self.muon_lr > 0 or self.kind != "muon",
            "muon_lr",
            "a positive learning rate for Muon's matrices with kind muon (0.02 is usual)",
        )
        require(self.warmup_steps >= 0, "warmup_steps", f">= 0, got {self.warmup_steps}")
        require(self.decay_steps >= 0, "decay_steps", f">= 0, got {self.decay_steps}")
        require(self.grad_clip >= 0, "grad_clip", f">= 0 (0: off), got {self.grad_clip}")
        decays = self.schedule != "constant"
        require(
            0 <= self.min_lr <= self.lr,
            "min_lr",
            f"a value in [0, lr = {self.lr}], got {self.min_lr}",
        )
        require(
            self.min_lr == 0 or decays,
            "min_lr",
            "0 unless schedule is cosine or linear (a constant schedule never reaches it)",
        )
        require(
            self.decay_steps == 0 or decays,
            "decay_steps",
            "0 unless schedule is cosine or linear (a constant schedule does not decay)",
        )

    def check_steps(self, steps: int) -> None:
        """Cross-check with the trial's `train.steps` (the decay's default length)."""
        end = self.decay_steps or steps
        if self.schedule != "constant":
            require(
                end > self.warmup_steps,
                "decay_steps" if self.decay_steps else "warmup_steps",
                f"warmup_steps ({self.warmup_steps}) < decay_steps ({end}, 0 = train.steps)",
            )
        require(
            self.warmup_steps <= steps,
            "warmup_steps",
            f"at most train.steps ({steps}), got {self.warmup_steps}",
        )

    def lr_multiplier(self, step: int, steps: int) -> float:
        """lr(step) / lr for the update at outer step `step` (0-based) of a `steps`-step run."""
        warm = self.warmup_steps
        if step < warm:
            return (step + 1) / (warm + 1)
        if self.schedule == "constant":
            return 1.0
        end, floor = self.decay_steps or steps, self.min_lr / self.lr
        if step >= end:
            return floor
        r = (step - warm) / (end - warm)
        c = 0.5 * (1.0 + math.cos(math.pi * r)) if self.schedule == "cosine" else 1.0 - r
        return floor + (1.0 - floor) * c


@dataclass(frozen=True)
class OptimizerKind:
    """One registered `optim.kind`: `build(params, cfg, lr, modules)` returns a
    torch.optim.Optimizer for one level's params (a list, or weight-decay groups) at rate
    `lr`; `uses` names the OptimConfig fields it reads of those that only some kinds read
    (a spec setting another is refused: the kind would ignore it)."""

    name: str
    build: Callable
    uses: frozenset
    source: str


OPTIONAL_FIELDS = ("momentum", "decay_rate", "muon_lr")
"""Fields that only some kinds read; a kind's `uses` declares which of them it reads."""
_OPTIMIZERS: dict[str, OptimizerKind] = {}


def register_optimizer(kind: str, build: Callable | None = None, *, uses=()):
    """Register an optimizer kind for `optim.kind` (also as a decorator of its build
    function); the built-ins below register the same way. Twice is refused, naming both."""

    def add(fn: Callable) -> Callable:
        where = f"{fn.__module__}.{fn.__qualname__}"
        old = _OPTIMIZERS.get(kind)
        if old is not None and old.build is not fn:
            raise RegistryError(f"optimizer kind {kind} registered twice: by {old.source} "
                                f"and by {where}")  # fmt: skip
        unknown = set(uses) - set(OPTIONAL_FIELDS)
        if unknown:
            raise RegistryError(f"optimizer kind {kind}: uses one of {OPTIONAL_FIELDS}, "
                                f"got {sorted(unknown)}")  # fmt: skip
        _OPTIMIZERS[kind] = OptimizerKind(kind, fn, frozenset(uses), where)
        return fn

    return add if build is None else add(build)


def optimizer_kinds() -> list[str]:
    return list(_OPTIMIZERS)


def _check_kind(cfg) -> None:
    require(cfg.kind in _OPTIMIZERS, "kind", f"one of {', '.join(_OPTIMIZERS)}, got {cfg.kind!r}")
    for name in OPTIONAL_FIELDS:
        users = [k for k, o in _OPTIMIZERS.items() if name in o.uses]
        why = f"0 unless kind is {' or '.join(users)} (kind {cfg.kind} would ignore it)"
        require(getattr(cfg, name) == 0 or name in _OPTIMIZERS[cfg.kind].uses, name, why)


def build_optimizer(
    params: Iterable[torch.nn.Parameter], cfg: OptimConfig, lr_factor=1.0, modules=()
):
    """One level's optimizer; `lr_factor` is the CMS learning-rate rule's scale and
    `modules` the level's modules, whose layer inputs the delta rule captures."""
    params, lr = list(params), cfg.lr * lr_factor
    if cfg.weight_decay:  # matrices only (see the notation above)
        params = [
            {"params": [p for p in params if p.ndim >= 2]},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        params = [g for g in params if g["params"]]
    return _OPTIMIZERS[cfg.kind].build(params, cfg, lr, modules)


def _delta(params, cfg, lr, modules):
    return DeltaRule(
        params, modules, kind=cfg.kind[len("delta_"):], lr=lr, decay_rate=cfg.decay_rate,
        momentum=cfg.momentum, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
    )  # fmt: skip


def _sgd(params, cfg, lr, modules):
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def fused(params) -> bool:
    """Whether torch's fused Adam kernel can step `params` (a list, or param groups): on
    CPU and CUDA, floating weights. It does one pass per tensor instead of a dozen kernels,
    which at small widths was 5-10% of a training step (bench/trainer_overhead.py); its
    results match the per-tensor loop's to float rounding, not bit for bit."""
    flat = [p for g in params for p in g["params"]] if params and isinstance(params[0], dict) \
        else list(params)  # fmt: skip
    return bool(flat) and all(
        p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in flat
    )


def _adam(params, cfg, lr, modules):
    cls = torch.optim.Adam if cfg.kind == "adam" else torch.optim.AdamW
    return cls(
        params, lr=lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay,
        fused=fused(params) or None,
    )  # fmt: skip


class MuonAdamW:
    """One level's `muon` optimizer: torch.optim.Muon for its hidden matrices and
    torch.optim.AdamW for the rest, stepped together, with the param groups of both (so the
    CMS rule's factor and the schedule scale both rates) and one state dict."""

    def __init__(self, params, cfg, lr: float, modules):
        groups = params if params and isinstance(params[0], dict) else [{"params": params}]
        outside = _embeddings_and_vocab_heads(modules)
        muon, rest = [], []
        for g in groups:
            mats = [p for p in g["params"] if p.ndim == 2 and id(p) not in outside]
            others = [p for p in g["params"] if p.ndim != 2 or id(p) in outside]
            muon += mats
            if others:
                rest.append({**g, "params": others})
        scale = lr / cfg.lr  # the CMS rule's factor, applied to Muon's rate too
        self.parts = []
        if muon:
            self.parts.append(torch.optim.Muon(
                muon, lr=cfg.muon_lr * scale, weight_decay=cfg.weight_decay,
                adjust_lr_fn="original",
            ))  # fmt: skip
        if rest:
            self.parts.append(torch.optim.AdamW(
                rest, lr=lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                weight_decay=cfg.weight_decay, fused=fused(rest) or None,
            ))  # fmt: skip
        self.matrices = len(muon)

    @property
    def param_groups(self) -> list[dict]:
        # read live: torch's load_state_dict replaces each part's group dicts
        return [g for part in self.parts for g in part.param_groups]

    def step(self) -> None:
        for part in self.parts:
            part.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, sd: dict) -> None:
        for part, state in zip(self.parts, sd["parts"], strict=True):
            part.load_state_dict(state)

    def metrics(self) -> dict[str, float]:
        """The matrices Muon updates on this level (the count that proves it acted), and
        AdamW's rate beside Muon's (the level's `lr` metric is its first group's: Muon's)."""
        out = {"muon_matrices": float(self.matrices)}
        if isinstance(self.parts[-1], torch.optim.AdamW):
            out["adamw_lr"] = float(self.parts[-1].param_groups[0]["lr"])
        return out


def _embeddings_and_vocab_heads(modules) -> set[int]:
    """Ids of the parameters Muon must leave to AdamW: embedding tables, and the weight of a
    linear layer onto the vocabulary (out_features equal to an embedding's row count)."""
    mods = [m for top in modules for m in top.modules()]
    embeds = [m for m in mods if isinstance(m, torch.nn.Embedding)]
    vocab = {e.num_embeddings for e in embeds}
    heads = [m for m in mods if isinstance(m, torch.nn.Linear) and m.out_features in vocab]
    return {id(m.weight) for m in embeds + heads}


def _muon(params, cfg, lr, modules):
    return MuonAdamW(params, cfg, lr, modules)


register_optimizer("adam", _adam)
register_optimizer("adamw", _adam)
register_optimizer("sgd", _sgd, uses=("momentum",))
register_optimizer("delta_sgd", _delta, uses=("momentum", "decay_rate"))
register_optimizer("delta_adam", _delta, uses=("decay_rate",))
register_optimizer("muon", _muon, uses=("muon_lr",))
