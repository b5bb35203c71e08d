"""`variants:` of a spec: named sets of overrides on `base`, swept as the `variant` factor.

A trial's config is `base`, then its variant's overrides, then its other swept values
(`apply_point`); each variant must build into a valid trial config on its own, and no swept
key may also be set by a variant (which would win is not obvious), each refused in one line.
"""

from __future__ import annotations

import re
from typing import Any

from models.errors import ConfigError
from nlsweep.config.builder import set_path
from nlsweep.config.space import Choice, Grid
from nlsweep.config.specfile import Reporter
from nlsweep.training.trial import TrialConfig

VARIANT = "variant"
"""The space key that picks one of the spec's named `variants:` per trial."""
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
"""A spec's name and its variants' names: letters, digits, _ and - (a name becomes a path)."""


def apply_point(base_raw: dict, variants: dict, values: dict[str, Any]) -> dict:
    """base with a trial's values applied: its variant's overrides first, then the rest."""
    raw = base_raw
    if VARIANT in values and values[VARIANT] not in variants:  # never the base in its place
        raise ValueError(f"variant {values[VARIANT]!r}: one of {', '.join(variants) or 'none'}")
    for path, value in variants.get(values.get(VARIANT), {}).items():
        raw = set_path(raw, path, value)
    for path, value in values.items():
        if path != VARIANT:
            raw = set_path(raw, path, value)
    return raw


def parse_variants(raw, base_raw: dict, err: Reporter) -> dict[str, dict[str, Any]]:
    """`variants:` -> {name: {path: value}}, each variant built into a full trial config."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        err("variants", "a mapping of name -> {dotted.path: value, ...}")
    for name, overrides in raw.items():
        key = f"variants.{name}"
        if not isinstance(name, str) or not NAME_RE.match(name):
            err(key, "a name matching [A-Za-z0-9_-]+")
        if not isinstance(overrides, dict):
            err(key, "a mapping of dotted paths into base -> value ({} for the base itself)")
        try:
            TrialConfig.from_dict(apply_point(base_raw, raw, {VARIANT: name}))
        except ConfigError as e:
            err(key, f"overrides valid for base; {e.key}: {e.expected}")
    return raw


def check_variant_factor(dist, variants: dict, space_raw: dict, err: Reporter) -> None:
    key = f"space.{VARIANT}"
    if not variants:
        err(key, "a `variants:` section defining the names it sweeps")
    if not isinstance(dist, (Grid, Choice)):
        err(key, "{grid: [...]} or {choice: [...]} of variant names")
    for v in dist.values:
        if v not in variants:
            err(key, f"names defined under variants ({', '.join(variants)}), got {v!r}")
    touched = {p for overrides in variants.values() for p in overrides}
    for p in space_raw:
        clash = [t for t in touched if t == p or t.startswith(p + ".") or p.startswith(t + ".")]
        if p != VARIANT and clash:
            err(f"space.{p}", f"not also set by a variant ({clash[0]}): which would win?")
