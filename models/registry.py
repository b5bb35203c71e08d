"""The registry of model kinds: `model.kind` in a spec -> its config dataclass and builder.

The built-in kinds register here through `register_model` (`models/kinds.py`), exactly as a
plugin does, and the harness looks kinds up here and nowhere else. Importing this module
loads no torch.

The contract a kind's model keeps is written in `models/capabilities.py` (and in
docs/extending.md): a plain `torch.nn.Module` whose forward maps token ids (B, T) to logits
(B, T, V) is enough; recurrent state, CMS levels, the teach signal, counters and warnings
are optional members, each checked when a spec asks for it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from models.errors import ConfigError

__all__ = ["ModelKind", "RegistryError", "model_kind", "model_kinds", "register_model", "source_of"]


class RegistryError(ValueError):
    """A registration that cannot stand (a kind twice, a config that is no dataclass)."""


@dataclass(frozen=True)
class ModelKind:
    """One registered kind: `build(config, vocab_size)` returns the model; `model_cls` is
    the class whose members declare the kind's capabilities; `source` says who registered
    it (module, file and line) for messages."""

    name: str
    config_cls: type
    model_cls: type
    build: Callable
    source: str

    @property
    def qualname(self) -> str:
        return f"{self.model_cls.__module__}.{self.model_cls.__qualname__}"


_KINDS: dict[str, ModelKind] = {}


def source_of(obj) -> str:
    try:
        file = inspect.getsourcefile(obj) or "?"
        line = inspect.getsourcelines(obj)[1]
    except (OSError, TypeError):
        return f"{obj.__module__}.{obj.__qualname__}"
    return f"{obj.__module__}.{obj.__qualname__} ({file}:{line})"


def register_model(kind: str, config_cls: type, model_cls: type | None = None, build=None):
    """Register `kind`: `register_model("gated_lstm", GatedConfig, GatedLSTM)`, or as a
    decorator of the model class, `@register_model("gated_lstm", GatedConfig)`. `build`
    defaults to `model_cls(config, vocab_size)`. A kind registered twice is refused, naming
    both registrations."""
    import dataclasses

    if not isinstance(kind, str) or not kind.isidentifier():
        raise RegistryError(f"model kind {kind!r}: a Python identifier such as gated_lstm")
    if not (isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls)):
        raise RegistryError(
            f"model kind {kind}: its config must be a dataclass, got {config_cls!r}"
        )

    def add(cls: type) -> type:
        if not isinstance(cls, type):
            raise RegistryError(f"model kind {kind}: the model must be a class, got {cls!r}")
        entry = ModelKind(kind, config_cls, cls, build or cls, source_of(cls))
        old = _KINDS.get(kind)
        if old is not None and old.model_cls is not cls:
            raise RegistryError(
                f"model kind {kind} registered twice: by {old.source} and by {entry.source}"
            )
        _KINDS[kind] = entry
        return cls

    return add if model_cls is None else add(model_cls)


def model_kind(kind) -> ModelKind:
    """The registered kind, or a ConfigError at `model.kind` naming every registered one."""
    if kind not in _KINDS:
        raise ConfigError("model.kind", f"one of {', '.join(_KINDS)}, got {kind!r}")
    return _KINDS[kind]


def model_kinds() -> list[str]:
    """Every registered kind, in registration order."""
    return list(_KINDS)
