"""Reading a spec: typed configs from plain dicts, the spec file's lines and overrides, the
search space, resources, and what growing a grid adds. Imports neither torch nor mlflow
nor ray, so every other layer (reports included) may use it."""

from nlsweep.config.builder import as_number, build, flatten, get_path, set_path, to_dict
from nlsweep.config.grow import new_points
from nlsweep.config.resources import Resources, check_resources, local_resources
from nlsweep.config.seeds import AdaptiveSeeds, ReportConfig, SeedsConfig, seed_sequence
from nlsweep.config.space import (
    Choice,
    Grid,
    LogUniform,
    RandInt,
    SchedulerConfig,
    SearchConfig,
    Uniform,
    grid_points,
    short_names,
    trial_label,
)
from nlsweep.config.specfile import SpecError, apply_override, line_map
from nlsweep.config.units import duration

__all__ = [
    "AdaptiveSeeds", "Choice", "Grid", "LogUniform", "RandInt", "ReportConfig", "Resources",
    "SchedulerConfig", "SearchConfig", "SeedsConfig", "SpecError", "Uniform",
    "apply_override", "as_number", "build", "check_resources", "duration", "flatten",
    "get_path", "grid_points", "line_map", "local_resources", "new_points", "seed_sequence",
    "set_path", "short_names", "to_dict", "trial_label",
]  # fmt: skip
