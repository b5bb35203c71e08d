"""Shared pieces of the model package: ownership checks, parameter counts, state detaching,
the position a state carries and the tensors a model keeps for its diagnostics.

`models/` never imports yaml, ray or mlflow: configs here are plain dataclasses that check
their own values in `__post_init__` and raise `ConfigError(key, expected)`; the harness adds
the spec file, the line and the dotted path in front of the key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from models.errors import ConfigError, require

__all__ = [
    "ConfigError",
    "check_ownership",
    "detach_state",
    "kept",
    "param_count",
    "position",
    "require",
]


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


def position(state, i: int) -> int:
    """The token position a recurrent state carries at `state[i]` (per row; rows move in
    lockstep, so row 0's), 0 without a state: one host read per call, and none without a
    state, since under torch.compile a host read splits the graph."""
    return 0 if state is None else int(state[i][0].item())


def kept(t: torch.Tensor) -> torch.Tensor:
    """`t` detached, kept past the call for diagnostics. A copy under torch.compile: the graph
    that resumes after a host read (`position`) rebuilt such detached views at the wrong shape
    (torch 2.13: "shape [16, 64, 96] is invalid for input of size 32768")."""
    t = t.detach()
    return t.clone() if torch.compiler.is_compiling() else t
