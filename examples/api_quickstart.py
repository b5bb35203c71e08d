"""The quickstart sweep from Python: load a spec, run it, read its trials back, write the
report, and train one trial without Ray. CI runs this script (tests/test_examples.py).

    python examples/api_quickstart.py [--workdir DIR] [--steps N]

Everything it writes (MLflow store, Ray storage, report) goes under --workdir (default: a new
temporary folder), so it leaves the checkout as it was.
"""

import argparse
import tempfile
from pathlib import Path

import nlsweep

SPEC = Path(__file__).resolve().parent.parent / "search_spaces" / "quickstart.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--steps", type=int, default=40, help="training steps per trial")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="nlsweep-api-"))
    uri = f"sqlite:///{work.resolve() / 'mlflow.db'}"

    # 1. The spec, with the same overrides `--set` takes on the command line.
    spec = nlsweep.load_spec(
        SPEC,
        overrides=[f"base.train.steps={args.steps}", f"base.train.eval_every={args.steps // 2}"],
        tracking_uri=uri,
        storage=str(work / "ray"),
    )
    print(f"{spec.name}: {spec.plan.trials} trials, {spec.plan.algorithm} search")

    # 2. The sweep: Ray Tune + MLflow, then the report; the trials come back as a DataFrame.
    result = nlsweep.run_sweep(spec, report_dir=work / "reports")
    columns = ["trial", "cms.periods.medium", "seed", "status", "val/bpc", "run_id"]
    print(result.trials[columns].to_string(index=False))
    assert result.ok, f"the sweep ended with exit code {result.exit_code}"

    # 3. The same trials read back from the tracking store, as on any machine that reaches it.
    again = nlsweep.load_trials(spec.name, tracking_uri=uri)
    assert list(again["run_id"]) == list(result.trials["run_id"])
    best = again.loc[again["val/bpc"].idxmin()]
    medium, seed, bpc = best["cms.periods.medium"], best["seed"], best["val/bpc"]
    print(f"best: medium={medium} seed={seed} val/bpc={bpc:.4f}")

    # 4. The report, rewritten from MLflow alone.
    print(f"report: {nlsweep.write_report(spec.name, work / 'again.md', tracking_uri=uri)}")

    # 5. One trial without Ray: the spec's base config.
    trainer = nlsweep.Trainer(spec.base)
    last = list(trainer.run())[-1]
    print(f"one trial without Ray: step {int(last['step'])}, val/bpc {last['val/bpc']:.4f}")


if __name__ == "__main__":
    main()
