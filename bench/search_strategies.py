"""Grid vs random vs Optuna TPE vs TPE + ASHA on one discrete search space: the trial-steps
each search spends before one of its trials comes within 1% of the grid's best held-out
objective, over 3 search seeds.

    python bench/search_strategies.py [SPEC] [--tracking-uri URI] [--storage DIR]
                                      [--seeds 0,1,2] [--within 0.01] [--out FILE]

SPEC (default search_spaces/hope_tune.yaml) is an Optuna + ASHA spec whose space is all
`choice:`, so a grid can enumerate it. The benchmark
1. writes the grid form of SPEC beside the report (`choice` -> `grid`, FIFO, name NAME_grid)
   and runs it through nlsweep (Ray, MLflow, the full-split final evaluation) unless the
   tracking store already holds that sweep finished (an interrupted one is resumed);
2. replays each search over the grid's logged learning curves: a Ray Tune trainable that,
   for the config a searcher proposes, reports the held-out objective that config logged
   at each evaluation. Training is deterministic per (config, seed) (`nlsweep rerun`
   checks a repeat bit for bit), so a replayed trial reports what training it again would,
   and a trial ASHA stops at an evaluation has run exactly the steps up to it. The
   searchers and the scheduler are the sweep's own (`nlsweep.execution.sweep.make_search_alg` and
   `make_scheduler` on the spec with the search section set per strategy);
3. charges each search the training steps its trials ran, in the order they ran, until a
   trial finishes all its steps with a final objective within 1% of the grid's best.
   Replayed trials run one at a time so each search is a pure function of its seed (TPE
   sees every earlier result; the real sweep runs `max_concurrent` at a time).
Every sampled search draws as many trials as the grid has configurations. Writes a
markdown report (default reports/NAME_search.md). A figure to read, not a test.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import search_report
import yaml
from ray import cloudpickle, tune
from search_report import (
    ROOT,
    STRATEGIES,
    Ran,
    Reference,
    cost_to,
    header,
    key,
    load,
    real_section,
    save,
    target_section,
    trial_lists,
)

from nlsweep.execution.cluster import start_ray
from nlsweep.execution.sweep import make_scheduler, make_search_alg, to_tune
from nlsweep.spec import Spec, load_spec
from nlsweep.tracking.read import read_sweep
from nlsweep.tracking.store import TrackingError

# Ray's workers cannot import the scripts in bench/: ship what the replayed trainable calls
# by value, as __main__'s own functions are.
cloudpickle.register_pickle_by_value(search_report)


def grid_form(spec_path: Path) -> tuple[str, str]:
    """The grid sweep of SPEC's space: its name and YAML text."""
    raw = yaml.safe_load(spec_path.read_text())
    space = {}
    for path, dist in raw["space"].items():
        if set(dist) != {"choice"}:
            sys.exit(f"{spec_path}: space.{path}: expected {{choice: [...]}} (a grid must list it)")
        space[path] = {"grid": dist["choice"]}
    name = f"{raw['name']}_grid"
    grid = {**raw, "name": name, "space": space, "search": {"algorithm": "grid"}}
    grid["description"] = (
        f"every configuration of {raw['name']}'s space, the search benchmark's reference"
    )
    grid.pop("scheduler", None)
    head = f"# Written by bench/search_strategies.py from {spec_path.name}: its space as a grid.\n"
    return name, head + yaml.safe_dump(grid, sort_keys=False)


def finished(uri: str, name: str, trials: int, metric: str):
    """The newest sweep `name` in the store when all its trials finished, else None / 'resume'."""
    try:
        sweep = read_sweep(uri, name, history_keys=(metric,))
    except TrackingError:
        return None
    done = [t for t in sweep.trials if t.status == "FINISHED" and metric in t.metrics]
    return sweep if len(done) == trials else "resume"


class Record(tune.Callback):
    def __init__(self, curves: dict, paths: list[str]):
        self.curves, self.paths, self.ran = curves, paths, []

    def on_trial_complete(self, iteration, trials, trial, **info):
        curve = self.curves[key(trial.config[p] for p in self.paths)]
        n = trial.last_result["training_iteration"]
        cfg = {p: trial.config[p] for p in self.paths}
        self.ran.append(Ran(cfg, n, curve[n - 1][0], curve[n - 1][1], n == len(curve)))


def replay(spec: Spec, curves: dict, storage: str) -> list[Ran]:
    """Run the spec's search and scheduler over the logged curves, one trial at a time."""
    paths, metric = list(spec.space), spec.metric

    def trainable(config):
        for step, value in curves[key(config[p] for p in paths)]:
            tune.report({metric: value, "step": step})

    record = Record(curves, paths)
    tuner = tune.Tuner(
        trainable,
        param_space={p: to_tune(d) for p, d in spec.space.items()},
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=spec.mode,
            search_alg=make_search_alg(spec),
            scheduler=make_scheduler(spec),
            num_samples=spec.plan.num_samples,
        ),
        run_config=tune.RunConfig(
            name=f"replay-{spec.name}", storage_path=storage, callbacks=[record], verbose=0
        ),
    )
    if tuner.fit().errors:  # a replay that lost trials would undercount a search's cost
        raise RuntimeError(f"replay of {spec.name}: trials failed (Ray's errors above)")
    return record.ran


def searched(spec_path: Path, overrides: list[str], curves: dict, uri: str) -> list[Ran]:
    with tempfile.TemporaryDirectory() as tmp:
        # One at a time: each search a function of its seed (see the module docstring).
        spec = load_spec(spec_path, [*overrides, "max_concurrent=1"], tracking_uri=uri, storage=tmp)
        return replay(spec, curves, tmp)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec", nargs="?", default=str(ROOT / "search_spaces/hope_tune.yaml"))
    ap.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    ap.add_argument("--storage", default="./ray_results")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", help="markdown report (default reports/NAME_search.md)")
    ap.add_argument(
        "--saved", action="store_true", help="rewrite the report from the saved replays"
    )
    a = ap.parse_args(argv)
    spec_path = Path(a.spec).resolve()
    spec = load_spec(spec_path, tracking_uri=a.tracking_uri, storage=a.storage)
    out = Path(a.out or ROOT / "reports" / f"{spec.name}_search.md")
    folder = out.with_suffix("")
    folder.mkdir(parents=True, exist_ok=True)
    name, text = grid_form(spec_path)
    grid_path = folder / f"{name}.yaml"
    if not grid_path.exists() or grid_path.read_text() != text:
        grid_path.write_text(text)
    grid_spec = load_spec(grid_path, tracking_uri=a.tracking_uri, storage=a.storage)
    n = grid_spec.plan.trials

    sweep = finished(a.tracking_uri, name, n, spec.metric)
    if not hasattr(sweep, "trials"):
        cmd = [sys.executable, str(ROOT / "run_sweep.py"), str(grid_path)]
        cmd += ["--tracking-uri", a.tracking_uri, "--storage", a.storage]
        cmd += ["--resume"] if sweep == "resume" else []
        print("running the grid:", " ".join(cmd[1:]), flush=True)
        if subprocess.run(cmd).returncode != 0:
            sys.exit("the grid sweep did not finish; run this again to resume it")
        sweep = finished(a.tracking_uri, name, n, spec.metric)
    paths = list(spec.space)
    curves = {
        key(t.params[p] for p in paths): t.history[spec.metric]
        for t in sweep.trials
        if t.status == "FINISHED"
    }
    ref = Reference(sweep, grid_path, paths, curves, 1 if spec.mode == "min" else -1)

    seeds = [int(x) for x in a.seeds.split(",")]
    if a.saved:
        results = load(folder / "replays.json")
    else:
        start_ray()
        results = {"grid": {None: replay(grid_spec, curves, tempfile.mkdtemp())}}
        for label, overrides in STRATEGIES.items():
            results[label] = {}
            for s in seeds:
                sets = [o.replace("$N", str(n)).replace("$S", str(s)) for o in overrides]
                results[label][s] = searched(spec_path, sets, curves, a.tracking_uri)
                print(f"{label} seed {s}: {cost_to(results[label][s], ref.hit(0.01))}", flush=True)
        save(folder / "replays.json", results)
    args = " ".join(x for x in (argv if argv is not None else sys.argv[1:]) if x != "--saved")
    md = header(spec, spec_path, ref, seeds, args)
    for within in (0.01, 0.005, 0.0):
        md += target_section(spec, ref, results, within)
    try:
        real = read_sweep(a.tracking_uri, spec.name, history_keys=(spec.metric,))
    except TrackingError:
        real = None
    if real is not None and spec.plan.seed in results["TPE + ASHA"]:
        md += real_section(spec, ref, real, results["TPE + ASHA"][spec.plan.seed])
    md += trial_lists(spec, results)
    out.write_text("\n".join(md))
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
