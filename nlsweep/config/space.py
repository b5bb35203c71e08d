"""The search space of a spec, as plain data: distributions, the search plan, grid expansion.

This module is pure (no Ray, no I/O): `translate(space, search)` turns the spec's `space:`
and `search:` sections into a `SearchPlan`, which the sweep runner maps one-to-one onto
Ray Tune domains and a search algorithm. Distribution forms in a spec:

    {grid: [v1, v2, ...]}     every value, crossed with the other grid axes (grid search)
    {choice: [v1, v2, ...]}   one value drawn per trial (random / optuna)
    {uniform: [lo, hi]}       real number in [lo, hi]
    {loguniform: [lo, hi]}    real number, log-uniform in [lo, hi], lo > 0
    {randint: [lo, hi]}       integer in [lo, hi) (upper bound excluded, as in tune.randint)
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Literal

from models.errors import ConfigError, require
from nlsweep.config.builder import as_number


@dataclass(frozen=True)
class Grid:
    values: tuple


@dataclass(frozen=True)
class Choice:
    values: tuple


@dataclass(frozen=True)
class Uniform:
    lo: float
    hi: float


@dataclass(frozen=True)
class LogUniform:
    lo: float
    hi: float


@dataclass(frozen=True)
class RandInt:
    lo: int
    hi: int


Distribution = Grid | Choice | Uniform | LogUniform | RandInt
CONTINUOUS = (Uniform, LogUniform)
FORMS = ("grid", "choice", "uniform", "loguniform", "randint")


@dataclass
class SearchConfig:
    """`search:` section."""

    algorithm: Literal["grid", "random", "optuna"] = "grid"
    num_samples: int = 0
    """Trials to draw (random / optuna); grid runs every combination once and takes none."""
    sampler: Literal["tpe", "random", "cmaes"] = "tpe"
    """Optuna sampler (optuna only); always seeded with `seed`."""
    seed: int = 0
    """Seed of the random / optuna sampler, so a search is reproducible."""

    def __post_init__(self):
        require(self.num_samples >= 0, "num_samples", f">= 0, got {self.num_samples}")
        require(self.seed >= 0, "seed", f"a non-negative integer, got {self.seed}")
        if self.algorithm == "grid":
            require(
                self.num_samples == 0,
                "num_samples",
                "unset for grid search (it runs every combination once)",
            )
        else:
            require(
                self.num_samples >= 1,
                "num_samples",
                f"a positive number of trials for {self.algorithm} search",
            )
        require(
            self.sampler == "tpe" or self.algorithm == "optuna",
            "sampler",
            f"unset unless algorithm is optuna (got sampler {self.sampler})",
        )


@dataclass
class SchedulerConfig:
    """`scheduler:` section: early stopping of unpromising trials."""

    kind: Literal["fifo", "asha"] = "fifo"
    """fifo runs every trial to the end; asha stops the worst at each rung."""
    grace_period: int = 1
    """ASHA: evaluations every trial gets before it can be stopped."""
    reduction_factor: float = 2.0
    """ASHA: 1/reduction_factor of the trials go on at each rung."""

    def __post_init__(self):
        require(self.grace_period >= 1, "grace_period", f">= 1, got {self.grace_period}")
        require(self.reduction_factor > 1, "reduction_factor", f"> 1, got {self.reduction_factor}")


def _pair(form: str, v: Any) -> tuple:
    if isinstance(v, list):
        v = [as_number(x) for x in v]
    ok = (
        isinstance(v, list)
        and len(v) == 2
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
    )
    require(ok, form, f"[lo, hi] with two numbers, got {v!r}")
    lo, hi = v
    require(lo < hi, form, f"lo < hi, got [{lo}, {hi}]")
    return lo, hi


def parse_distribution(raw: Any) -> Distribution:
    """One `space:` entry -> a distribution; ConfigError(form, expected) when malformed."""
    if not (isinstance(raw, dict) and len(raw) == 1 and next(iter(raw)) in FORMS):
        raise ConfigError("distribution", f"one of {{{': ..}, {'.join(FORMS)}: ..}}, got {raw!r}")
    form, v = next(iter(raw.items()))
    if form in ("grid", "choice"):
        require(isinstance(v, list) and len(v) >= 1, form, f"a non-empty list, got {v!r}")
        require(len({repr(x) for x in v}) == len(v), form, f"distinct values, got {v!r}")
        return Grid(tuple(v)) if form == "grid" else Choice(tuple(v))
    lo, hi = _pair(form, v)
    if form == "uniform":
        return Uniform(float(lo), float(hi))
    if form == "loguniform":
        require(lo > 0, form, f"lo > 0 for a log scale, got {lo}")
        return LogUniform(float(lo), float(hi))
    require(isinstance(lo, int) and isinstance(hi, int), form, f"two integers, got {v!r}")
    return RandInt(lo, hi)


def as_spec(dist: Distribution) -> dict:
    """The spec form of a distribution ({'grid': [2, 8]}), JSON-ready for the record."""
    form = {Grid: "grid", Choice: "choice", Uniform: "uniform", LogUniform: "loguniform",
            RandInt: "randint"}[type(dist)]  # fmt: skip
    if isinstance(dist, (Grid, Choice)):
        return {form: list(dist.values)}
    return {form: [dist.lo, dist.hi]}


def candidate_values(dist: Distribution) -> list:
    """Values that must all be valid for the field: every listed value, or both ends."""
    if isinstance(dist, (Grid, Choice)):
        return list(dist.values)
    if isinstance(dist, RandInt):
        return [dist.lo, dist.hi - 1]
    return [dist.lo, dist.hi]


@dataclass(frozen=True)
class SearchPlan:
    params: dict[str, Distribution]
    algorithm: str
    num_samples: int
    """Ray's num_samples: 1 for grid (each grid point once), else the trials to draw."""
    trials: int
    """How many trials the sweep runs."""
    sampler: str
    seed: int


def translate(space: dict[str, Distribution], search: SearchConfig) -> SearchPlan:
    """Spec `space` + `search` -> the plan the runner hands to Ray Tune (pure, table-tested)."""
    for path, dist in space.items():
        if search.algorithm == "grid" and not isinstance(dist, Grid):
            raise ConfigError(
                path,
                "{grid: [...]} for grid search (use search.algorithm random or optuna "
                "to sample other distributions)",
            )
        if search.algorithm != "grid" and isinstance(dist, Grid):
            raise ConfigError(
                path,
                f"{{choice: [...]}} or a range: grid does not mix with {search.algorithm} search",
            )
    if search.algorithm == "grid":
        trials = math.prod(len(d.values) for d in space.values()) if space else 1
        num_samples = 1
    else:
        trials = num_samples = search.num_samples
    return SearchPlan(
        params=dict(space),
        algorithm=search.algorithm,
        num_samples=num_samples,
        trials=trials,
        sampler=search.sampler if search.algorithm == "optuna" else "",
        seed=search.seed,
    )


def grid_points(params: dict[str, Distribution]) -> list[dict[str, Any]]:
    """Every combination of the grid axes, in Ray's order (the first axis varies fastest)."""
    paths = list(params)
    axes = [params[p].values for p in reversed(paths)]
    return [dict(zip(paths, reversed(combo))) for combo in itertools.product(*axes)]


def short_names(paths: list[str]) -> dict[str, str]:
    """The shortest unique dotted suffix of each path: 'cms.periods.medium' -> 'medium'."""
    out = {}
    for path in paths:
        parts = path.split(".")
        for k in range(1, len(parts) + 1):
            cand = ".".join(parts[-k:])
            if sum(1 for q in paths if q == cand or q.endswith("." + cand)) == 1:
                break
        out[path] = cand
    return out


def trial_label(values: dict[str, Any]) -> str:
    """Run name showing the swept values, e.g. 'medium=8 seed=1'."""
    names = short_names(list(values))
    return " ".join(f"{names[k]}={_fmt(v)}" for k, v in values.items()) or "base"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
