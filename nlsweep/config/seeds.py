"""How many seeds a sweep spends, and what its report asks of them: the `seeds:` and `report:`
sections of a spec.

`seeds: {adaptive: {min, max, batch, alpha}}` runs `min` seeds of every configuration, then
adds `batch` seeds, round by round, only to the configurations whose comparison with the
baseline is undecided (`nlsweep/report/sequential.py` decides, anytime-valid), up to `max`.
The seeds are the `train.seed` grid's values, then the integers after its largest.
`report: {effect_of_interest, power}` asks each report how many seeds it would take to
detect a difference of that size. Pure data and checks: no torch, no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.errors import require


@dataclass
class AdaptiveSeeds:
    """`seeds.adaptive`: sequential seeds with an anytime-valid stopping rule."""

    min: int = 3
    """Seeds every configuration runs before the first decision."""
    max: int = 12
    """Seeds a configuration runs at most."""
    batch: int = 2
    """Seeds added to each undecided configuration per round."""
    alpha: float = 0.05
    """Family-wise error rate across the rows compared with the baseline (Holm)."""

    def __post_init__(self):
        require(self.min >= 1, "min", f"a positive number of seeds, got {self.min}")
        require(self.batch >= 1, "batch", f"at least 1 seed per round, got {self.batch}")
        require(0 < self.alpha < 0.5, "alpha", f"a level in (0, 0.5), got {self.alpha}")
        require(self.max >= self.min, "min", f"at most max ({self.max}), got {self.min}")


@dataclass
class SeedsConfig:
    """`seeds:` section."""

    adaptive: AdaptiveSeeds | None = None


@dataclass
class ReportConfig:
    """`report:` section: what the report computes beyond its fixed statistics."""

    effect_of_interest: float | None = None
    """A difference of the objective (in its units) worth detecting: the report gives the
    seeds a fixed design needs to detect it, with the range the spread's uncertainty allows."""
    power: float = 0.8
    """The power the minimum detectable effect and the seeds needed are computed at."""

    def __post_init__(self):
        if self.effect_of_interest is not None:
            require(
                self.effect_of_interest > 0,
                "effect_of_interest",
                f"a positive difference of the objective, got {self.effect_of_interest}",
            )
        require(0.5 <= self.power < 1, "power", f"a power in [0.5, 1), got {self.power}")


def seed_sequence(grid: list[int], count: int) -> list[int]:
    """The first `count` seeds: the grid's values in order, then the integers after its
    largest."""
    seeds = list(grid[:count])
    nxt = max(grid) + 1 if grid else 0
    while len(seeds) < count:
        seeds.append(nxt)
        nxt += 1
    return seeds
