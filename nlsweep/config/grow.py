"""Growing a sweep that exists (`--extend`): which new trials a changed spec asks for.

A grid sweep grows by values: more seeds, another learning rate, a new variant. Every trial
it already ran stays valid only if nothing that decides a trial changed, so the new spec may
differ from the one the experiment recorded (`Spec.fixed`, kept in `nlsweep.json`) only by
values added to its grid axes, variants added to `variants:` and the resources that run
trials (`resources`, `max_concurrent`). The new trials are the points of the new grid that
the old grid did not have, in the new grid's order. Pure: no Ray, no I/O.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from models.errors import ConfigError
from nlsweep.config.builder import flatten

RUNS_TRIALS = ("resources", "max_concurrent")
"""Settings that decide where and how many trials run at once, never what a trial computes."""


def _changed(old: Any, new: Any, key: str) -> ConfigError:
    if isinstance(old, dict) and isinstance(new, dict):
        a, b = flatten(old), flatten(new)
        for k in sorted(set(a) | set(b)):
            if a.get(k, "(unset)") != b.get(k, "(unset)"):
                was, now = a.get(k, "(unset)"), b.get(k, "(unset)")
                return ConfigError(
                    f"{key}.{k}", f"unchanged to extend the sweep (was {was!r}, now {now!r})"
                )
    return ConfigError(key, f"unchanged to extend the sweep (was {old!r}, now {new!r})")


def _grid(space: dict, factor: str, which: str) -> list:
    dist = space[factor]
    if set(dist) != {"grid"}:
        raise ConfigError(
            f"space.{factor}", f"a grid to extend the sweep ({which} spec: {json.dumps(dist)})"
        )
    return list(dist["grid"])


def new_points(old: dict, new: dict) -> list[dict[str, Any]]:
    """The trials (factor -> value) the spec `new` adds to the sweep that ran `old` (both
    `Spec.fixed`); a ConfigError (key, what was expected) for any other change."""
    algorithm = new.get("search", {}).get("algorithm")
    if algorithm != "grid":
        raise ConfigError(
            "search.algorithm", f"grid to extend the sweep (got {algorithm}: for more samples "
            "of a random or optuna search, start a sweep with a larger num_samples)"
        )  # fmt: skip
    for key in sorted(set(old) | set(new)):
        if key in ("space", "variants", *RUNS_TRIALS):
            continue
        if old.get(key) != new.get(key):
            raise _changed(old.get(key), new.get(key), key)
    for name, overrides in old.get("variants", {}).items():
        if new.get("variants", {}).get(name) != overrides:
            raise _changed(overrides, new.get("variants", {}).get(name), f"variants.{name}")
    if list(old["space"]) != list(new["space"]):
        raise ConfigError(
            "space", f"the same factors to extend the sweep (was {list(old['space'])}, "
            f"now {list(new['space'])}): a new factor changes every trial that ran"
        )  # fmt: skip
    factors = list(new["space"])
    before = {f: _grid(old["space"], f, "recorded") for f in factors}
    after = {f: _grid(new["space"], f, "new") for f in factors}
    for f in factors:
        gone = [v for v in before[f] if v not in after[f]]
        if gone:
            raise ConfigError(
                f"space.{f}", f"every value already run still listed (missing {gone})"
            )
    ran = set(itertools.product(*(map(_key, before[f]) for f in factors)))
    points = [
        dict(zip(factors, values))
        for values in itertools.product(*(after[f] for f in factors))
        if tuple(map(_key, values)) not in ran
    ]
    if not points:
        raise ConfigError("space", "at least one value not run yet (nothing to extend)")
    return points


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
