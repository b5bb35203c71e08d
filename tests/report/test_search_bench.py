"""bench/search_strategies.py's machinery on synthetic learning curves: the grid form of a
choice spec, the replay of the sweep's own searchers and ASHA, and the compute accounting.
(The benchmark itself trains a real grid; this checks what it would count.)"""

import importlib.util
import sys
from pathlib import Path

import pytest
import ray
import yaml

from nlsweep.execution.cluster import start_ray
from nlsweep.spec import load_spec
from tests.helpers import spec_text

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))  # as when the script runs: its sibling module
_spec = importlib.util.spec_from_file_location("bench_search", ROOT / "bench/search_strategies.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_search"] = bench  # its dataclasses look their module up
_spec.loader.exec_module(bench)
# Ray's workers cannot import a script by this name: ship its functions by value, as they
# are when the script runs as __main__.
ray.cloudpickle.register_pickle_by_value(bench)

SPEC = """\
name: tune
description: a choice space
metric: val/bpc
mode: min
base:
  model: {kind: nested_lstm, d_model: 16, d_ff: 32}
  cms:   {periods: {fast: 1, medium: 2, slow: 4}}
  optim: {kind: adam, lr: 3.0e-3}
  data:  {corpus: pydoc, seq_len: 16, batch_size: 4}
  train: {steps: 40, eval_every: 10, eval_batches: 2, seed: 0}
space:
  optim.lr: {choice: [1.0e-3, 3.0e-3, 1.0e-2]}
  cms.periods.medium: {choice: [2, 4]}
search: {algorithm: optuna, sampler: tpe, num_samples: 6, seed: 0}
scheduler: {kind: asha, grace_period: 1, reduction_factor: 2}
resources: {cpu: 1, gpu: 0}
max_concurrent: 2
"""

LRS = [1.0e-3, 3.0e-3, 1.0e-2]
PERIODS = [2, 4]


def curves() -> dict:
    """4 evaluations per config; lr 3e-3 with period 4 is best, lr 1e-2 worst early."""
    out = {}
    for i, lr in enumerate(LRS):
        for j, p in enumerate(PERIODS):
            end = 2.0 + abs(i - 1) * 0.3 + (1 - j) * 0.05
            out[bench.key([str(lr), str(p)])] = [
                (10 * (k + 1), end + (3 - k) * (0.2 + 0.3 * (i == 2))) for k in range(4)
            ]
    return out


@pytest.fixture(scope="module")
def local_ray():
    start_ray()
    yield
    ray.shutdown()


def test_grid_form_is_the_same_space_as_a_grid(tmp_path):
    path = tmp_path / "tune.yaml"
    path.write_text(SPEC)
    name, text = bench.grid_form(path)
    assert name == "tune_grid"
    (tmp_path / "grid.yaml").write_text(text)
    grid = load_spec(tmp_path / "grid.yaml", tracking_uri="sqlite:///x.db", storage=str(tmp_path))
    spec = load_spec(path, tracking_uri="sqlite:///x.db", storage=str(tmp_path))
    assert grid.plan.algorithm == "grid" and grid.scheduler.kind == "fifo"
    assert grid.plan.trials == 6
    assert {p: list(d.values) for p, d in grid.space.items()} == {
        p: list(d.values) for p, d in spec.space.items()
    }
    assert grid.base == spec.base and grid.metric == spec.metric


def test_grid_form_refuses_a_range(tmp_path):
    path = tmp_path / "tune.yaml"
    path.write_text(
        spec_text({"space/optim.lr": {"loguniform": [1, 2]}}, base=yaml.safe_load(SPEC))
    )
    with pytest.raises(SystemExit, match="space.optim.lr: expected"):
        bench.grid_form(path)


def test_key_matches_tune_values_and_mlflow_params():
    assert bench.key([0.001, [2, 8], 0]) == bench.key(["0.001", "[2, 8]", "0.0"])
    assert bench.key([0.001]) != bench.key([0.003])


def test_cost_to_charges_every_trial_up_to_the_first_complete_hit():
    ran = [
        bench.Ran({}, 1, 10, 1.0, False),  # below the bound but stopped: not a hit
        bench.Ran({}, 4, 40, 2.5, True),
        bench.Ran({}, 4, 40, 2.0, True),
        bench.Ran({}, 4, 40, 1.9, True),
    ]
    assert bench.cost_to(ran, lambda v: v <= 2.02) == (90, 3)
    assert bench.cost_to(ran, lambda v: v <= 1.0) == (None, None)


@pytest.mark.slow
def test_replayed_searches_use_the_sweeps_searcher_and_asha(tmp_path, local_ray):
    path = tmp_path / "tune.yaml"
    path.write_text(SPEC)
    (tmp_path / "grid.yaml").write_text(bench.grid_form(path)[1])
    table = curves()
    grid = load_spec(tmp_path / "grid.yaml", tracking_uri="sqlite:///x.db", storage=str(tmp_path))
    ran = bench.replay(grid, table, str(tmp_path / "g"))
    # The grid: every configuration once, run to its end, charged its steps.
    assert len(ran) == 6 and all(r.complete and r.steps == 40 for r in ran)
    assert sorted(r.value for r in ran) == sorted(c[-1][1] for c in table.values())
    first_best = ran.index(min(ran, key=lambda r: r.value))
    assert bench.cost_to(ran, lambda v: v <= 2.0)[0] == 40 * (1 + first_best)

    asha = bench.searched(path, ["max_concurrent=1"], table, "sqlite:///x.db")
    assert len(asha) == 6
    stopped = [r for r in asha if not r.complete]
    # ASHA stopped some trials at a rung; each is charged the steps to its last evaluation.
    assert stopped and all(r.steps == 10 * r.evals < 40 for r in stopped)
    for r in asha:
        c = table[bench.key([r.config["optim.lr"], r.config["cms.periods.medium"]])]
        assert (r.steps, r.value) == c[r.evals - 1]
    # The same seed replays the same search; TPE is seeded.
    again = bench.searched(path, ["max_concurrent=1"], table, "sqlite:///x.db")
    assert [(r.config, r.evals) for r in again] == [(r.config, r.evals) for r in asha]
