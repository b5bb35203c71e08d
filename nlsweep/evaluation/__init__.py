"""Evaluation with the community's tools: a trial as an lm-evaluation-harness model
(`adapter.NlsweepLM`, registered as `nlsweep`), its tasks run on a trial (`harness`), needles
in long haystacks (`needles`), a spec's `eval:` section on trials and runs (`config`, `runs`),
and the batched scorer beneath them (`scorer`). The only package that imports lm_eval, and only when
an evaluation runs: nothing here imports it at import time."""

from nlsweep.evaluation.config import NEEDLES, TAG_EVAL, EvalConfig, tag_of
from nlsweep.evaluation.harness import (
    TaskError,
    check_tasks,
    evaluate,
    lm_eval_main,
    metrics_of,
    task_manager,
)
from nlsweep.evaluation.loading import (
    TAG_CHECKPOINT,
    LoadError,
    TrialModel,
    trial_from_run,
    trial_from_state,
    trial_from_trainer,
)
from nlsweep.evaluation.needles import NeedleConfig, run_needles
from nlsweep.evaluation.runs import (
    EVAL_DONE,
    EVAL_WARNINGS,
    eval_trainer,
    eval_trial,
    evaluate_runs,
    pending,
)
from nlsweep.evaluation.scorer import CONTEXT_MODES, Scorer, ScoringError

__all__ = [
    "CONTEXT_MODES", "EVAL_DONE", "EVAL_WARNINGS", "NEEDLES", "TAG_CHECKPOINT", "TAG_EVAL",
    "EvalConfig", "LoadError", "NeedleConfig", "Scorer", "ScoringError", "TaskError", "TrialModel",
    "check_tasks", "eval_trainer", "eval_trial", "evaluate", "evaluate_runs", "lm_eval_main",
    "metrics_of", "pending", "run_needles", "tag_of", "task_manager", "trial_from_run",
    "trial_from_state", "trial_from_trainer"
]  # fmt: skip
