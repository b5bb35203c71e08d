"""Spec -> search space translation, as tables."""

import pytest
from ray import tune

from models.errors import ConfigError
from nlsweep.config.space import (
    Choice,
    Grid,
    LogUniform,
    RandInt,
    SearchConfig,
    Uniform,
    as_spec,
    grid_points,
    parse_distribution,
    short_names,
    translate,
    trial_label,
)
from nlsweep.execution.sweep import to_tune

PARSE = [
    ({"grid": [2, 8]}, Grid((2, 8))),
    ({"choice": ["adam", "sgd"]}, Choice(("adam", "sgd"))),
    ({"uniform": [0, 1]}, Uniform(0.0, 1.0)),
    ({"loguniform": [1e-4, 1e-2]}, LogUniform(1e-4, 1e-2)),
    ({"randint": [1, 5]}, RandInt(1, 5)),
]


@pytest.mark.parametrize("raw,dist", PARSE)
def test_parse(raw, dist):
    assert parse_distribution(raw) == dist
    assert parse_distribution(as_spec(dist)) == dist  # the form recorded in MLflow


@pytest.mark.parametrize(
    "raw,fragment",
    [
        ({"grid": []}, "non-empty list"),
        ({"grid": [1, 1]}, "distinct values"),
        ({"uniform": [1]}, "[lo, hi]"),
        ({"uniform": [2, 1]}, "lo < hi"),
        ({"loguniform": [-1, 1]}, "lo > 0"),
        ({"randint": [0.5, 3]}, "two integers"),
        ({"grid": [1], "choice": [2]}, "one of"),
        (5, "one of"),
    ],
)
def test_parse_errors(raw, fragment):
    with pytest.raises(ConfigError) as e:
        parse_distribution(raw)
    assert fragment in str(e.value)


G2, G3 = Grid((2, 8)), Grid((0, 1, 2))
TRANSLATE = [
    # space, search, (algorithm, ray num_samples, trials, sampler)
    ({}, SearchConfig(), ("grid", 1, 1, "")),
    ({"a": G2}, SearchConfig(), ("grid", 1, 2, "")),
    ({"a": G2, "b": G3}, SearchConfig(), ("grid", 1, 6, "")),
    ({"a": Uniform(0, 1)}, SearchConfig("random", 5), ("random", 5, 5, "")),
    ({"a": Choice((1, 2))}, SearchConfig("optuna", 7, "tpe", 3), ("optuna", 7, 7, "tpe")),
    ({"a": LogUniform(1e-3, 1)}, SearchConfig("optuna", 4, "cmaes"), ("optuna", 4, 4, "cmaes")),
    ({"a": RandInt(1, 4)}, SearchConfig("optuna", 4, "random"), ("optuna", 4, 4, "random")),
]


@pytest.mark.parametrize("space,search,expected", TRANSLATE)
def test_translate(space, search, expected):
    plan = translate(space, search)
    assert (plan.algorithm, plan.num_samples, plan.trials, plan.sampler) == expected
    assert plan.params == space
    assert plan.seed == search.seed


@pytest.mark.parametrize(
    "space,search,fragment",
    [
        ({"a": Uniform(0, 1)}, SearchConfig(), "{grid: [...]} for grid search"),
        ({"a": Choice((1, 2))}, SearchConfig(), "{grid: [...]} for grid search"),
        ({"a": G2}, SearchConfig("random", 4), "grid does not mix with random"),
        ({"a": G2}, SearchConfig("optuna", 4), "grid does not mix with optuna"),
    ],
)
def test_translate_errors(space, search, fragment):
    with pytest.raises(ConfigError) as e:
        translate(space, search)
    assert fragment in str(e.value) and e.value.key == "a"


TO_TUNE = [
    (Grid((2, 8)), lambda d: d == {"grid_search": [2, 8]}),
    (Choice(("x", "y")), lambda d: d.categories == ["x", "y"]),
    (
        Uniform(0.5, 2.0),
        lambda d: (d.lower, d.upper) == (0.5, 2.0) and type(d.get_sampler()).__name__ == "_Uniform",
    ),
    (
        LogUniform(1e-4, 1e-2),
        lambda d: (
            (d.lower, d.upper) == (1e-4, 1e-2) and type(d.get_sampler()).__name__ == "_LogUniform"
        ),
    ),
    (
        RandInt(1, 5),
        lambda d: (d.lower, d.upper) == (1, 5) and isinstance(d, tune.search.sample.Integer),
    ),
]


@pytest.mark.parametrize("dist,check", TO_TUNE)
def test_to_tune(dist, check):
    assert check(to_tune(dist))


def test_grid_points_follow_ray_order():
    """Ray varies the first grid axis fastest; the dry run lists trials in the same order."""
    from ray.tune.search.variant_generator import generate_variants

    space = {"a": Grid((1, 2)), "b": Grid(("x", "y", "z"))}
    ray_order = [cfg for _, cfg in generate_variants({k: to_tune(d) for k, d in space.items()})]
    assert grid_points(space) == ray_order
    assert len(ray_order) == 6


def test_labels():
    assert short_names(["cms.periods.medium", "train.seed"]) == {
        "cms.periods.medium": "medium",
        "train.seed": "seed",
    }
    assert short_names(["a.x.lr", "b.x.lr"]) == {"a.x.lr": "a.x.lr", "b.x.lr": "b.x.lr"}
    assert trial_label({"cms.periods.medium": 8, "train.seed": 1}) == "medium=8 seed=1"
    assert trial_label({"optim.lr": 0.000123456}) == "lr=0.0001235"


def _spec(write_spec, text):
    from nlsweep.spec import load_spec

    return load_spec(write_spec(text), available={"CPU": 2.0, "GPU": 0.0})


def test_search_algorithms_are_seeded_and_capped(write_spec):
    """Grid/random cap concurrency in the generator (Ray ignores TuneConfig's cap for it);
    Optuna samplers are always given the spec's seed (Optuna 5 changed TPE defaults)."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from nlsweep.execution.sweep import make_search_alg
    from tests.helpers import GOOD_SPEC

    alg = make_search_alg(_spec(write_spec, GOOD_SPEC))
    assert isinstance(alg, BasicVariantGenerator) and alg.max_concurrent == 2
    from tests.helpers import spec_text

    def optuna_text(**search):
        return spec_text({
            "space": {"cms.periods.medium": {"choice": [1, 2]}, "train.seed": {"choice": [0, 1]}},
            "search": {"algorithm": "optuna", "num_samples": 6, "seed": 11, **search},
        })  # fmt: skip

    import optuna
    from optuna.distributions import FloatDistribution

    def draws(sampler_name, seed):
        text = optuna_text(seed=seed, sampler=sampler_name)
        alg = make_search_alg(_spec(write_spec, text))
        assert alg.searcher.max_concurrent == 2  # Tune's ConcurrencyLimiter, sealed state
        sampler = alg.searcher.searcher._sampler
        study = optuna.create_study(sampler=sampler)
        out = []
        for _ in range(3):
            trial = study.ask({"x": FloatDistribution(0.0, 1.0)})
            study.tell(trial, trial.params["x"])
            out.append(trial.params["x"])
        return type(sampler).__name__, out

    for name, cls in (
        ("tpe", "TPESampler"),
        ("random", "RandomSampler"),
        ("cmaes", "CmaEsSampler"),
    ):
        kind, first = draws(name, 11)
        assert kind == cls
        assert draws(name, 11)[1] == first  # same seed, same suggestions
        assert draws(name, 12)[1] != first
    tpe = make_search_alg(_spec(write_spec, optuna_text())).searcher.searcher._sampler
    assert tpe._multivariate and tpe._constant_liar


@pytest.mark.parametrize(
    "text,value",
    [("1e-06", 1e-06), ("1e-3", 1e-3), ("-2.5E+2", -250.0), (".5", 0.5), ("3", 3.0),
     ("e5", "e5"), ("adam", "adam"), ("1e", "1e"), ("", "")],
)  # fmt: skip
def test_yaml_1_2_numbers(text, value):
    """PyYAML reads 1e-06 (Python's, hence MLflow's, spelling) as a string; fields that
    want a float take it as the number it spells."""
    from nlsweep.config.builder import as_number

    assert as_number(text) == value


def test_exponent_floats_in_specs_and_overrides(write_spec):
    from nlsweep.spec import load_spec
    from tests.helpers import GOOD_SPEC

    text = GOOD_SPEC.replace("lr: 3.0e-3", "lr: 3e-3").replace(
        "train.seed: {grid: [0, 1]}", "optim.lr: {grid: [1e-3, 1e-2]}"
    )
    spec = load_spec(write_spec(text), ["base.optim.eps=1e-06"], available={"CPU": 2, "GPU": 0})
    assert spec.base.optim.lr == 3e-3 and spec.base.optim.eps == 1e-6
    assert spec.space["optim.lr"] == Grid((1e-3, 1e-2))
    assert spec.trial_config({"optim.lr": 1e-2}).optim.lr == 1e-2
