"""What a model kind must provide, and what it may declare: the contract of the registry.

Notation
    B, T, V     batch rows, tokens per row, vocabulary size
    ids         LongTensor (B, T) of token ids;  logits: float tensor (B, T, V)
    state       a tuple of tensors a stateful model carries from one batch of a stream to the
                next, each with the batch rows at dimension `state_batch_dim`
    level l     a named group of parameters with its own optimizer and CMS period C_l

Required (a plain `torch.nn.Module` is enough):
    Model(config, vocab_size)            built from its registered config dataclass
    forward(ids) -> logits               ids (B, T) -> logits (B, T, V)

A model with only those is wrapped in `PlainLM`: one level `fast` holding every parameter,
no state. The members below are optional; a spec that asks for one the model lacks is
refused in one line naming the model class and the member.

    Levels        levels: tuple[str, ...]; level_parameters() -> {level: [params]};
                  level_modules() -> {level: [modules]}      (cms.periods, delta optimizers)
                  forward(ids, state=None) -> (logits, state): a model that declares levels
                  uses the harness's forward form
    Stateful      carries_state = True; init_state(B, device); state_batch_dim (rows' dim);
                  state_names (for the state/norm_* counters)   (state.mode persistent, ...);
                  state_is_context (default True): the state is all a token sees of earlier
                  calls, so any split of a stream equals one pass (False for attention that
                  sees only its own call; the contract kit then skips that check)
    SurpriseLevels forward_levels(ids, state) -> per-level outputs   (surprise.weights)
    InContext     uses_targets = True; Model(config, vocab_size, cms, teach);
                  forward(ids, state, targets=...)              (cms.token_periods, teach)
    Memorizes     memorizes = True (with Stateful): the state a call returns holds what the
                  model learned in context (memory weights, fast weights), so replaying a
                  prompt through it before a query is test-time memorization
                  (eval.memorize; nlsweep/evaluation)
    Counters      inner_metrics() -> {name: float}; warnings() -> {name: why}

The built-in kinds (`models/kinds.py`) declare these members themselves and register through
the same `register_model` as any plugin.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

from models.registry import ModelKind

__all__ = [
    "Counters", "InContext", "Levels", "PlainLM", "Stateful", "SurpriseLevels", "build_model",
    "is_plain", "member_of", "probe_forward",
]  # fmt: skip

REQUIRED = ("forward",)


@runtime_checkable
class Levels(Protocol):
    levels: tuple[str, ...]

    def level_parameters(self) -> dict[str, list[nn.Parameter]]: ...

    def level_modules(self) -> dict[str, list[nn.Module]]: ...


@runtime_checkable
class Stateful(Protocol):
    carries_state: bool
    state_batch_dim: int
    state_names: tuple[str, ...]

    def init_state(self, batch_size: int, device=...): ...


@runtime_checkable
class SurpriseLevels(Protocol):
    def forward_levels(self, ids: torch.Tensor, state=None): ...


@runtime_checkable
class InContext(Protocol):
    uses_targets: bool


@runtime_checkable
class Counters(Protocol):
    def inner_metrics(self) -> dict[str, float]: ...

    def warnings(self) -> dict[str, str]: ...


def is_plain(model_cls: type) -> bool:
    """A model that declares no levels: it only maps ids to logits."""
    return not hasattr(model_cls, "level_parameters")


def member_of(model_cls: type, name: str, default=None):
    """A capability member of a kind's class, with what `PlainLM` gives a plain model."""
    return getattr(PlainLM if is_plain(model_cls) else model_cls, name, default)


class PlainLM(nn.Module):
    """A plain `nn.Module` language model in the harness's form: one level `fast` with every
    parameter, no state, `forward(ids, state=None) -> (logits, None)`. The wrapped model is
    `.lm`; its forward's output is checked once, on the first batch."""

    levels = ("fast",)
    carries_state = False
    state_batch_dim = 0
    state_names: tuple[str, ...] = ()

    def __init__(self, lm: nn.Module, vocab_size: int):
        super().__init__()
        self.lm = lm
        self.vocab_size = vocab_size
        self._checked = False

    def level_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {"fast": list(self.lm.parameters())}

    def level_modules(self) -> dict[str, list[nn.Module]]:
        return {"fast": [self.lm]}

    def forward(self, ids: torch.Tensor, state=None):
        logits = self.lm(ids)
        if not self._checked:
            check_logits(type(self.lm), ids, logits, self.vocab_size)
            self._checked = True
        return logits, None


def check_logits(model_cls: type, ids: torch.Tensor, logits, vocab_size: int) -> None:
    """A forward's output is float logits of shape (B, T, V), or a one-line TypeError."""
    want = (*ids.shape, vocab_size)
    name = f"{model_cls.__module__}.{model_cls.__qualname__}"
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            f"{name}.forward: expected logits of shape {want}, got {type(logits).__name__}"
        )
    if tuple(logits.shape) != want or not logits.dtype.is_floating_point:
        raise TypeError(f"{name}.forward: expected float logits of shape {want} (B, T, V), "
                        f"got {logits.dtype} {tuple(logits.shape)}")  # fmt: skip


def build_model(kind: ModelKind, config, vocab_size: int, cms=None, teach=None) -> nn.Module:
    """The kind's model in the harness's form (a plain model wrapped in `PlainLM`)."""
    if getattr(kind.model_cls, "uses_targets", False):
        return kind.build(config, vocab_size, cms, teach)
    model = kind.build(config, vocab_size)
    return PlainLM(model, vocab_size) if is_plain(kind.model_cls) else model


def probe_forward(kind: ModelKind, config, vocab_size: int = 32, cms=None, teach=None) -> None:
    """One CPU forward of a plain model on a (2, 4) batch: a forward whose output is not
    (B, T, V) float logits is a one-line TypeError before any trial starts."""
    if not is_plain(kind.model_cls):
        return  # a model that declares levels keeps the harness's forward form
    model = kind.build(config, vocab_size)
    ids = torch.randint(0, vocab_size, (2, 4), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(ids)
    check_logits(kind.model_cls, ids, logits, vocab_size)
