"""Typed config dataclasses from plain dicts: unknown keys rejected, types checked.

Each section's dataclass lives next to its owner (`models.*Config`, `nlsweep.data.DataConfig`,
`nlsweep.training.TrainConfig`); this module only knows how to build any of them from the
parsed YAML and how to turn them back into flat `section.field` parameters.
Errors are `ConfigError(dotted.key, expected)`; the spec loader adds the file and line.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from models.errors import ConfigError

# YAML 1.2 floats that PyYAML (YAML 1.1) reads as strings because they lack a dot, such as
# 1e-3 or 1e-06 (how Python prints small floats, so also how MLflow stores them).
FLOAT_RE = re.compile(r"[-+]?(\d[\d_]*(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


MAX_MAGNITUDE = 1e15
"""The largest number any config field takes (steps, sizes, rates, seeds): a sweep with more
steps than this, or with inf or nan anywhere, is a typo that would run forever or produce NaN
from the first step, so it is refused before anything starts."""


def as_number(value: Any) -> Any:
    """A string spelling a number in YAML 1.2 (1e-3, 1e-06) -> that float; else unchanged."""
    if isinstance(value, str) and FLOAT_RE.fullmatch(value):
        return float(value.replace("_", ""))
    return value


def _describe(tp) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in get_args(tp))
    if origin is dict:
        return "a mapping"
    if origin is list:
        return f"a list of {_describe(get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    if tp is float:
        return "a number"
    if tp is int:
        return "an integer"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    return getattr(tp, "__name__", str(tp))


def _same_container(tp, value: Any) -> bool:
    """`value` is the list or mapping that `tp` describes, whatever its items are."""
    if get_origin(tp) is list:
        return isinstance(value, list)
    return (get_origin(tp) is dict or dataclasses.is_dataclass(tp)) and isinstance(value, dict)


def coerce(tp, value: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted where floats are."""
    origin = get_origin(tp)
    if tp is Any:  # a mapping whose owner types it later (a plugin's options dataclass)
        return value
    if origin is Literal:
        if value in get_args(tp) and not isinstance(value, bool):
            return value
    elif origin in (Union, types.UnionType):
        inner = None  # the error inside a list or mapping of the right shape says more
        for arg in get_args(tp):
            if arg is type(None) and value is None:
                return None
            if arg is not type(None):
                try:
                    return coerce(arg, value, key)
                except ConfigError as e:
                    if _same_container(arg, value):
                        inner = inner or e
        if inner is not None:
            raise inner
    elif origin is dict:
        key_tp, val_tp = get_args(tp)
        if isinstance(value, dict):
            return {
                coerce(key_tp, k, key): coerce(val_tp, v, f"{key}.{k}") for k, v in value.items()
            }
    elif origin is list:
        (item_tp,) = get_args(tp)
        if isinstance(value, list):
            return [coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return build(tp, value, f"{key}.")
    elif tp is float:
        value = as_number(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if abs(value) <= MAX_MAGNITUDE:  # False for nan, inf and numbers past it
                return float(value)
            raise ConfigError(key, f"expected a finite number of at most {MAX_MAGNITUDE:g} "
                              f"in size, got {value!r}")  # fmt: skip
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) <= MAX_MAGNITUDE:
                return value
            raise ConfigError(key, f"expected an integer of at most {MAX_MAGNITUDE:g} in size, "
                              f"got {value:.3g}")  # fmt: skip
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a config annotation this builder does not know
        raise TypeError(f"unsupported config annotation {tp!r} for {key}")
    raise ConfigError(key, f"expected {_describe(tp)}, got {value!r}")


def build(cls, data: Any, prefix: str = ""):
    """Instantiate dataclass `cls` from a dict, with dotted-key errors for every problem."""
    where = prefix.rstrip(".") or cls.__name__
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(where, f"expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for k in data:
        if k not in names:
            raise ConfigError(f"{prefix}{k}", f"unknown key; expected one of {', '.join(names)}")
    kwargs = {k: coerce(hints[k], v, f"{prefix}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix}{e.key}", e.expected) from None


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def set_path(d: dict, path: str, value: Any) -> dict:
    """A deep copy of nested dict `d` with the dotted `path` set to `value`."""
    out = copy.deepcopy(d)
    node = out
    parts = path.split(".")
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(path, f"{p} is not a section")
        node = nxt
    node[parts[-1]] = value
    return out


def get_path(d: dict, path: str) -> Any:
    node = d
    for p in path.split("."):
        node = node[p]
    return node
