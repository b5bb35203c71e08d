"""Shared pieces of the model package: ownership checks, parameter counts, state detaching.

`models/` never imports yaml, ray or mlflow: configs here are plain dataclasses that check
their own values in `__post_init__` and raise `ConfigError(key, expected)`; the harness adds
the spec file, the line and the dotted path in front of the key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from models.errors import ConfigError, require

__all__ = ["ConfigError", "check_ownership", "detach_state", "param_count", "require"]


def check_ownership(model: nn.Module, groups: Mapping[str, Iterable[nn.Parameter]]) -> None:
    """Raise unless every parameter of `model` belongs to exactly one group.

    An earlier reproduction left the embedding and the head out of every optimizer (notes,
    pitfall 2); this check makes that impossible at construction time.
    """
    owner: dict[int, str] = {}
    for name, params in groups.items():
        for p in params:
            if id(p) in owner:
                raise ValueError(f"parameter owned twice: by {owner[id(p)]!r} and {name!r}")
            owner[id(p)] = name
    orphans = [n for n, p in model.named_parameters() if id(p) not in owner]
    if orphans:
        raise ValueError(f"parameters owned by no level: {', '.join(orphans)}")
    known = {id(p) for p in model.parameters()}
    strays = [name for name, params in groups.items() for p in params if id(p) not in known]
    if strays:
        raise ValueError(f"levels {sorted(set(strays))} hold parameters not in the model")


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def detach_state(state):
    """Detach a (possibly nested) recurrent state so the next step truncates BPTT."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    return type(state)(detach_state(s) for s in state)
