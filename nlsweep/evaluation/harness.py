"""Running lm-evaluation-harness tasks on a trial, and what its results become in MLflow.

lm-eval does the work: its task registry finds the tasks (its own, and task YAMLs in
`include_path` folders, such as a local jsonl task), its `simple_evaluate` builds the requests,
asks the model (`adapter.NlsweepLM`) and aggregates. nlsweep only names the results:

    eval/<task>/<metric>          the metric (lm-eval's `acc,none` is `acc`; a filter other
                                  than `none` is appended: `exact_match_strict-match`)
    eval/<task>/<metric>_stderr   its standard error, as lm-eval computes it

Task names outside MLflow's key alphabet are refused rather than renamed. lm-eval loads
only when one of these functions is called: importing nlsweep never imports it.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

PREFIX = "eval"
KEY_RE = re.compile(r"^[A-Za-z0-9_.\- ]+$")


class TaskError(ValueError):
    """A task lm-eval does not know or cannot load; the message is one line naming it."""


def _one_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else type(e).__name__)[:300]


def task_manager(tasks: Sequence[str], include_path: Sequence[str | Path] = ()):
    """lm-eval's `TaskManager` that knows every task of `tasks` (it indexes lm-eval's own
    task folders only when `include_path` does not hold them all); TaskError names the
    first unknown one."""
    from lm_eval.tasks import TaskManager

    paths = [str(p) for p in include_path]
    for p in paths:
        if not Path(p).is_dir():
            raise TaskError(f"eval include_path {p}: no such folder")
    local = TaskManager(include_path=paths or None, include_defaults=False)
    if all(t in local.all_tasks for t in tasks):
        return local
    manager = TaskManager(include_path=paths or None)
    for t in tasks:
        if t not in manager.all_tasks:
            raise TaskError(f"eval task {t!r}: not a task lm-eval knows (its own, or a task "
                            f"YAML in include_path {paths or '(none)'})")  # fmt: skip
    return manager


@contextlib.contextmanager
def in_folder(folder: str | Path | None):
    """Run inside `folder` (None: where we are): the folder a task YAML's relative data paths
    are read from, since lm-eval reads them from the working folder."""
    if not folder:
        yield
        return
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def check_tasks(tasks: Sequence[str], include_path: Sequence[str | Path] = (),
                cwd: str | Path | None = None):  # fmt: skip
    """Load every task now (its dataset too, from `cwd`), so a task that cannot load is one
    line before any trial starts; returns the task manager for `evaluate`."""
    with in_folder(cwd):
        return _check_tasks(tasks, include_path)


def _check_tasks(tasks: Sequence[str], include_path: Sequence[str | Path]):
    from lm_eval.tasks import get_task_dict

    for t in tasks:
        if not KEY_RE.match(t):
            raise TaskError(f"eval task {t!r}: letters, digits, '_', '-', '.' and spaces only "
                            "(it names MLflow metrics)")  # fmt: skip
    manager = task_manager(tasks, include_path)
    for t in tasks:
        try:
            get_task_dict([t], manager)
        except Exception as e:  # noqa: BLE001 - a dataset that cannot load raises anything
            raise TaskError(f"eval task {t!r}: cannot load ({_one_line(e)})") from None
    return manager


def metrics_of(results: dict) -> dict[str, float]:
    """`eval/<task>/<metric>` (and `_stderr`) of an lm-eval results dict."""
    out: dict[str, float] = {}
    for task, values in (results.get("results") or {}).items():
        for key, value in values.items():
            if "," not in key or not isinstance(value, (int, float)):
                continue  # "alias", "samples", ...
            metric, flt = key.split(",", 1)
            name = metric if flt == "none" else f"{metric}-{flt}"
            stderr = name.endswith("_stderr") or "_stderr-" in name
            if stderr and "_stderr-" in name:
                base, f = name.split("_stderr-", 1)
                name = f"{base}-{f}_stderr"
            if not KEY_RE.match(name):
                continue
            out[f"{PREFIX}/{task}/{name}"] = float(value)
    return out


def evaluate(
    lm,
    tasks: Sequence[str],
    *,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    include_path: Sequence[str | Path] = (),
    manager=None,
    seed: int = 0,
) -> tuple[dict[str, float], dict]:
    """Run `tasks` on the lm-eval model `lm`: (eval/* metrics, lm-eval's whole results)."""
    import lm_eval

    manager = manager or task_manager(tasks, include_path)
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=list(tasks),
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=manager,
        log_samples=False,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
        bootstrap_iters=1000,
    )
    return metrics_of(results), results


def lm_eval_main(argv: Sequence[str]) -> int:
    """lm-eval's own command line (`lm_eval ...`), with the `nlsweep` model registered."""
    from lm_eval.__main__ import cli_evaluate

    import nlsweep.evaluation.adapter  # noqa: F401 - registers the `nlsweep` model
    from nlsweep.evaluation.loading import LoadError
    from nlsweep.evaluation.scorer import ScoringError

    saved = sys.argv
    sys.argv = ["lm_eval", *argv]
    try:
        cli_evaluate()
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    except (LoadError, ScoringError, TaskError) as e:
        print(f"nlsweep lm-eval: {e}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved
    return 0
