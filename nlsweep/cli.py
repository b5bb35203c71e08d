"""nlsweep's command line: run, validate, report, list the trials of, train or rerun a sweep.

`run` a sweep, `validate` a spec, `prepare` its corpora, `report` a sweep, `trials` of a
sweep as a table or CSV, `train` a spec's base config as one trial without Ray, `rerun` a trial,
`eval` a sweep's finished trials on lm-eval tasks, `lm-eval` (lm-evaluation-harness's own
command line, with a trial as `--model nlsweep`).

Exit codes: 0 success; 1 a sweep ran but some trial failed; 2 a bad spec or an unusable
setup (tracking store, storage, resources, the cluster at $RAY_ADDRESS, an earlier run of
the sweep that is neither resumed nor restarted), reported as one line before any trial
starts; 3 the tracking store stayed away mid-sweep or filled its disk (resume once it is
back); 130, 143, 129 stopped by SIGINT, SIGTERM, SIGHUP (the message gives the command that
resumes the sweep). `rerun`: 0 every
re-run trial reproduced its run, 1 one did not (each difference printed), 2 nothing could run.
"""

from __future__ import annotations

import argparse
import sys


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="YAML sweep spec, e.g. search_spaces/quickstart.yaml")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec field, e.g. --set base.train.steps=50 (repeatable)",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="CI size: at most 20 steps, two evaluations of two batches",
    )
    p.add_argument("--tracking-uri", help="MLflow tracking URI (overrides the spec)")
    p.add_argument("--storage", help="Ray experiment storage path or URI (overrides the spec)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="nlsweep", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a sweep (Ray Tune + MLflow)")
    _spec_args(run)
    again = run.add_mutually_exclusive_group()
    again.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted sweep of this spec: unfinished and failed trials from "
        "their newest checkpoints, in the same MLflow runs",
    )
    again.add_argument(
        "--restart",
        action="store_true",
        help="archive the earlier experiment folder of this spec and run the sweep anew",
    )
    again.add_argument(
        "--extend",
        action="store_true",
        help="grow the sweep of this spec: run only the trials that values added to its grid "
        "ask for, in the same experiment and MLflow parent run (any other change is refused)",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print the expanded trials and the resource plan; start nothing",
    )
    run.add_argument(
        "--probe",
        action="store_true",
        help="with --dry-run: train the largest trial a few steps here and print its step "
        "time and peak memory, and how many fit on a GPU at the spec's share",
    )
    val = sub.add_parser("validate", help="check a spec and exit (0 valid, 2 invalid)")
    _spec_args(val)
    prep = sub.add_parser(
        "prepare",
        help="tokenize every corpus a spec's trials read into the cache; start nothing else",
    )
    _spec_args(prep)
    rep = sub.add_parser("report", help="write the markdown ablation report of a sweep")
    rep.add_argument("spec", metavar="SPEC_OR_NAME", help="a spec file, or an experiment name")
    rep.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: the spec's, else sqlite:///mlflow.db)"
    )
    rep.add_argument("--out", help="markdown file to write (default reports/NAME.md)")
    rep.add_argument("--run-id", help="the sweep's parent run (default: the newest sweep)")
    tri = sub.add_parser("trials", help="every trial of a sweep, one row each (or --csv FILE)")
    tri.add_argument("spec", metavar="SPEC_OR_NAME", help="a spec file, or an experiment name")
    tri.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: the spec's, else sqlite:///mlflow.db)"
    )
    tri.add_argument("--csv", metavar="FILE", help="write the trials as CSV instead of printing")
    tri.add_argument("--run-id", help="the sweep's parent run (default: the newest sweep)")
    one = sub.add_parser("train", help="run a spec's base config as one trial, without Ray")
    one.add_argument("spec", help="YAML sweep spec")
    one.add_argument("rest", nargs=argparse.REMAINDER, help="--set, --smoke, --variant")
    again = sub.add_parser(
        "rerun",
        help="re-run a trial of the newest sweep (Ray, MLflow) and say whether it reproduced",
    )
    again.add_argument("spec", metavar="SPEC_OR_NAME", help="a spec file, or an experiment name")
    again.add_argument(
        "which",
        metavar="ROW_OR_RUN_ID",
        help="a row of the report's main table (R3: each of its seeds) or a trial's run id",
    )
    again.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: the spec's, else sqlite:///mlflow.db)"
    )
    again.add_argument("--storage", help="Ray storage for the re-run (default: the spec's)")
    ev = sub.add_parser(
        "eval",
        help="run lm-eval tasks on every finished trial of a sweep, logging eval/* on its run "
        "(what was evaluated with the same settings is skipped), then write the report",
    )
    ev.add_argument("spec", metavar="SPEC_OR_NAME", help="a spec file, or an experiment name")
    ev.add_argument("--tasks", nargs="+", help="lm-eval task names (default: the spec's eval:)")
    ev.add_argument("--include-path", nargs="+", help="folders of task YAMLs (local tasks)")
    ev.add_argument("--limit", type=int, help="documents per task (0: all)")
    ev.add_argument("--num-fewshot", type=int)
    ev.add_argument("--batch-size", type=int)
    ev.add_argument("--context", choices=["truncate", "carry"])
    ev.add_argument("--max-length", type=int, help="the window (0: the trial's data.seq_len)")
    ev.add_argument(
        "--memorize-steps",
        type=int,
        help="replay each prompt N times first "
        "(test-time memorization; kinds without in-context memory are skipped)",
    )
    ev.add_argument(
        "--memorize-answer", action="store_true", help="replay the gold answer after the prompt"
    )
    ev.add_argument(
        "--memorize-carry",
        action="store_true",
        help="carry the memory from one request to the next (no reset)",
    )
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--tracking-uri", help="MLflow tracking URI (default: the spec's)")
    ev.add_argument("--no-report", action="store_true", help="do not rewrite the report")
    sub.add_parser(
        "lm-eval",
        help="lm-evaluation-harness's command line with the `nlsweep` model registered: "
        "--model nlsweep --model_args run=RUN_ID --tasks ... (docs/evaluation.md)",
        add_help=False,
    )
    return ap


def _locate(args) -> tuple[str | None, str, str] | int:
    """(spec file or None, experiment name, tracking URI) of SPEC_OR_NAME; 2 after one line."""
    from nlsweep.api import NotASpecOrName, locate
    from nlsweep.spec import SpecError

    try:
        return locate(args.spec, args.tracking_uri)
    except (SpecError, NotASpecOrName) as e:
        print(e, file=sys.stderr)
        return 2


def rerun(args) -> int:
    found = _locate(args)
    if isinstance(found, int):
        return found
    from nlsweep.api import prefer_loopback

    prefer_loopback()  # before Ray is imported
    from nlsweep.execution.cluster import ClusterError
    from nlsweep.execution.experiment import ExperimentError
    from nlsweep.execution.rerun import RerunError
    from nlsweep.execution.rerun import rerun as run_again
    from nlsweep.spec import SpecError
    from nlsweep.tracking.config import bound_http_calls
    from nlsweep.tracking.store import TrackingError

    bound_http_calls()
    spec_file, name, uri = found
    try:
        return run_again(spec_file, name, uri, args.which, storage=args.storage)
    except (RerunError, SpecError, TrackingError, ExperimentError, ClusterError) as e:
        print(e, file=sys.stderr)
        return 2


def evaluate(args) -> int:
    """`nlsweep eval SPEC_OR_NAME [--tasks ...]`; 2 after one line for what cannot start."""
    from nlsweep.api import EvalSetupError, NotASpecOrName, evaluate_sweep
    from nlsweep.evaluation import LoadError, ScoringError, TaskError
    from nlsweep.spec import SpecError
    from nlsweep.tracking.store import TrackingError

    settings = {k: getattr(args, k) for k in ("include_path", "limit", "num_fewshot",
                                               "batch_size", "context", "max_length")}  # fmt: skip
    if args.memorize_steps is not None:
        from nlsweep.evaluation.config import MemorizeConfig

        try:
            settings["memorize"] = MemorizeConfig(args.memorize_steps, args.memorize_answer,
                                                  not args.memorize_carry)  # fmt: skip
        except ValueError as e:
            print(f"nlsweep eval: --memorize-steps: {e}", file=sys.stderr)
            return 2
    elif args.memorize_answer or args.memorize_carry:
        print("nlsweep eval: --memorize-answer and --memorize-carry go with --memorize-steps",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        evaluate_sweep(args.spec, args.tasks, tracking_uri=args.tracking_uri, device=args.device,
                       report_dir=None if args.no_report else "reports", **settings)  # fmt: skip
    except (EvalSetupError, NotASpecOrName, TaskError, LoadError, ScoringError, SpecError,
            TrackingError) as e:  # fmt: skip
        print(f"nlsweep eval: {e}", file=sys.stderr)
        return 2
    return 0


def report(args) -> int:
    from pathlib import Path

    from nlsweep.report.writer import write_report
    from nlsweep.tracking.config import bound_http_calls
    from nlsweep.tracking.store import TrackingError

    found = _locate(args)
    if isinstance(found, int):
        return found
    bound_http_calls()
    _, name, uri = found
    try:
        out = write_report(uri, name, Path(args.out or f"reports/{name}.md"), args.run_id)
    except TrackingError as e:
        print(e, file=sys.stderr)
        return 2
    print(f"report: {out}")
    return 0


def resume_command(argv: list[str]) -> str:
    """The command that resumes the sweep `argv` (this CLI's arguments) started."""
    import os
    import shlex

    drop = ("--restart", "--resume", "--extend")
    args = [a for a in argv[argv[:1] == ["run"] :] if a not in drop]
    spec = parser().parse_args(["run", *args]).spec
    # the spec by its absolute path: the command works from any folder
    at = args.index(spec)
    args[at] = os.path.abspath(spec)
    return shlex.join(["nlsweep", "run", *args, "--resume"])


def format_metrics(m: dict[str, float]) -> str:
    keys = ("train/loss", "val/loss", "val/bpc", "val/ppl", "perf/tokens_per_s")
    keys += tuple(k for k in m if k.startswith("val/") and k.endswith("_acc"))
    parts = [f"step {int(m['step'])}"] + [f"{k} {m[k]:.6g}" for k in keys]
    return "  ".join(parts)


def trials(args) -> int:
    """`nlsweep trials NAME [--csv FILE]`: every trial of the newest sweep, one row each."""
    from nlsweep.api import load_trials
    from nlsweep.tracking.store import TrackingError

    found = _locate(args)
    if isinstance(found, int):
        return found
    try:
        frame = load_trials(found[1], tracking_uri=found[2], run_id=args.run_id)
    except TrackingError as e:
        print(e, file=sys.stderr)
        return 2
    if args.csv:
        frame.to_csv(args.csv, index=False)
        print(f"{len(frame)} trials: {args.csv}")
    else:
        print(frame.to_string(index=False))
    return 0


def train_main(argv: list[str] | None = None) -> int:
    """`nlsweep train SPEC` (or `python -m nlsweep.train SPEC`): the spec's base config as
    one trial, without Ray."""
    import torch

    from models.common import ConfigError, param_count
    from nlsweep.data.corpora import DataError
    from nlsweep.spec import VARIANT, SpecError, load_spec
    from nlsweep.training.runtime import Diverged
    from nlsweep.training.trainer import Trainer

    ap = argparse.ArgumentParser(
        prog="nlsweep train", description="Run a spec's base config as one trial."
    )
    ap.add_argument("spec")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--smoke", action="store_true", help="shrink steps and evaluation")
    ap.add_argument("--variant", metavar="NAME", help="one of the spec's variants, on the base")
    args = ap.parse_args(argv)
    try:
        spec = load_spec(args.spec, overrides=args.set, smoke=args.smoke)
    except SpecError as e:
        print(e, file=sys.stderr)
        return 2
    cfg = spec.base
    if args.variant is not None:
        if args.variant not in spec.variants:
            known = ", ".join(spec.variants) or "none"
            print(f"{args.spec}: --variant: one of {known}, got {args.variant!r}", file=sys.stderr)
            return 2
        cfg = spec.trial_config({VARIANT: args.variant})
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    try:
        trainer = Trainer(cfg)
    except DataError as e:
        print(f"{args.spec}: {e}", file=sys.stderr)
        return 2
    except ConfigError as e:  # a size the data cannot fill, found once the corpus is read
        print(f"{args.spec}: base.{e.key}: {e.expected}", file=sys.stderr)
        return 2
    print(
        f"{spec.name}: {cfg.model.kind}, {param_count(trainer.model)} parameters, "
        f"device {trainer.device}",
        flush=True,
    )
    try:
        for m in trainer.run():
            print(format_metrics(m), flush=True)
    except Diverged as e:
        print(f"diverged: {e}", file=sys.stderr)
        return 3
    for name, why in trainer.warnings().items():
        print(f"warning: {name}: {why}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:  # its own options, as `python -m nlsweep.train` takes them
        return train_main(argv[1:])
    if argv[:1] == ["lm-eval"]:  # lm-eval's own command line, with the nlsweep model
        from nlsweep.evaluation import lm_eval_main

        return lm_eval_main(argv[1:])
    args = parser().parse_args(argv)
    if args.command == "trials":
        return trials(args)
    if args.command == "report":
        return report(args)
    if args.command == "rerun":
        return rerun(args)
    if args.command == "eval":
        return evaluate(args)
    from nlsweep.spec import SpecError, load_spec

    try:
        spec = load_spec(
            args.spec,
            overrides=args.set,
            smoke=args.smoke,
            tracking_uri=args.tracking_uri,
            storage=args.storage,
        )
    except SpecError as e:
        print(e, file=sys.stderr)
        return 2
    if args.command == "validate":
        from nlsweep.spec import check_eval, probe_corpora

        try:
            probe_corpora(spec)
            check_eval(spec)
        except SpecError as e:
            print(e, file=sys.stderr)
            return 2
        print(f"{args.spec}: ok ({spec.plan.trials} trials, {spec.plan.algorithm} search)")
        return 0
    if args.command == "prepare":
        from nlsweep.execution.preflight import prepare_data

        try:
            prepare_data(spec, out=print)
        except SpecError as e:
            print(e, file=sys.stderr)
            return 2
        return 0
    if getattr(args, "probe", False) and not args.dry_run:
        print(f"{args.spec}: --probe: only with --dry-run", file=sys.stderr)
        return 2
    if args.dry_run:  # prints the plan; imports no Ray
        from nlsweep.execution.summary import dry_run, print_cost

        slots = dry_run(spec)
        step_s = None
        if args.probe:
            from nlsweep.execution.probe import probe

            step_s = probe(spec)["step_s"]
        print_cost(spec, slots, step_s)
        print("dry run: nothing was started")
        return 0
    from nlsweep.api import prefer_loopback

    prefer_loopback()  # before Ray is imported
    from nlsweep.execution import sweep
    from nlsweep.execution.cluster import ClusterError
    from nlsweep.execution.experiment import ExperimentError
    from nlsweep.tracking.store import TrackingError

    try:
        return sweep.run_sweep(
            spec,
            resume=args.resume,
            restart=args.restart,
            resume_command=resume_command(argv),
            extend=args.extend,
        )
    except (SpecError, TrackingError, ExperimentError, ClusterError) as e:
        print(e, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
