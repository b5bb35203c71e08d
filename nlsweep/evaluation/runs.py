"""A spec's `eval:` tasks on trials: inside a trial once its last step is done (`eval_trainer`),
and afterwards on the finished runs of a sweep (`evaluate_runs`, what `nlsweep eval` does).

Inside a trial the tasks run on the trainer's own model between its last evaluation and the
checkpoint that ends the trial. The model's weights and buffers, its train/eval mode and the
global RNGs (which lm-eval seeds) are put back afterwards, so that the final checkpoint is the
one a sweep without `eval:` writes. Their metrics travel with the trial's final result to the
MLflow writer, with the settings each task ran under (the run's `nlsweep.eval.<task>` tags).

Afterwards, each finished trial run is loaded from its run id (`loading.py`) and the tasks it
has no tag for with the same settings are run and logged at the run's final step: a killed
`nlsweep eval` resumes where it stopped, and a trial a scheduler stopped early gets its
scores too.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from nlsweep.evaluation.config import NEEDLES, EvalConfig, tag_of
from nlsweep.evaluation.harness import check_tasks, evaluate, in_folder, task_manager
from nlsweep.evaluation.loading import TrialModel, trial_from_run, trial_from_trainer
from nlsweep.evaluation.needles import run_needles
from nlsweep.tracking.tags import WARNING_PREFIX
from nlsweep.training.runtime import rng_state, set_rng_state

EVAL_DONE = "eval_done"
"""Result key of a trial's final report: JSON {task: settings} of the tasks it was evaluated on."""
EVAL_WARNINGS = "eval_warnings"
"""Result key of a trial's final report: JSON {name: why} of what its kind could not be
evaluated on (the run's `nlsweep.warning.<name>` tags)."""


def eval_trial(trial: TrialModel, ev: EvalConfig, parts: list[str] | None = None, manager=None,
               device=None) -> tuple[dict[str, float], dict[str, str], dict[str, str]]:  # fmt: skip
    """(eval/* metrics, {tag: settings}, {warning name: why}) of `parts` (task labels, and
    `needles`; default: all of `ev`'s) on `trial`. What the trial's kind cannot do (memorize
    without in-context memory, carry a needle without state) is skipped and said in the
    warnings, which become the run's `nlsweep.warning.*` tags."""
    with in_folder(ev.base_dir):
        return _eval_trial(trial, ev, parts, manager, device)


def _eval_trial(trial, ev, parts, manager, device):
    labels = ev.parts if parts is None else {p: ev.parts[p] for p in parts}
    warnings: dict[str, str] = {}
    tasks = [t for t in labels.values() if t != NEEDLES]
    if tasks and ev.memorize.steps and not getattr(type(trial.model), "memorizes", False):
        for label in labels:
            if labels[label] != NEEDLES:
                warnings[f"eval_{label}"] = (
                    f"{label} skipped: model kind {trial.kind} declares no "
                    "in-context memory to replay a prompt through"
                )
        tasks = []
    metrics: dict[str, float] = {}
    if tasks:
        from nlsweep.evaluation.adapter import NlsweepLM

        manager = manager or task_manager(tasks, ev.include_path)
        gold = gold_answers(tasks, manager) if ev.memorize.steps and ev.memorize.use_answer \
            else None  # fmt: skip
        lm = NlsweepLM(trial=trial, context=ev.context, max_length=ev.max_length or None,
                       batch_size=ev.batch_size, device=str(device or "cpu"),
                       memorize=ev.memorize, gold=gold)  # fmt: skip
        scores, _ = evaluate(lm, tasks, limit=ev.limit or None, num_fewshot=ev.num_fewshot,
                             include_path=ev.include_path, manager=manager,
                             seed=ev.seed)  # fmt: skip
        for key, value in scores.items():  # eval/<task>/... under the task's label
            _, task, metric = key.split("/", 2)
            metrics[f"eval/{ev.label(task)}/{metric}"] = value
    if NEEDLES in labels:
        found, skipped = run_needles(trial, ev.needles, device)
        metrics.update(found)
        warnings.update({f"eval_needles_{mode}": f"needles {why}" for mode, why in skipped.items()})
    return metrics, {tag_of(p): ev.settings(p) for p in labels}, warnings


def eval_trainer(trainer, ev: EvalConfig) -> dict:
    """The eval/* metrics of `ev`'s tasks on the trainer's model now, and EVAL_DONE; the
    trainer is left exactly as it was."""
    model = trainer.model
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    was_training, rngs = model.training, rng_state()
    try:
        metrics, tags, warnings = eval_trial(trial_from_trainer(trainer), ev,
                                             device=trainer.device)  # fmt: skip
    finally:
        model.load_state_dict(saved)
        model.train(was_training)
        set_rng_state(rngs)
    done = {tag.removeprefix(tag_of("")): settings for tag, settings in tags.items()}
    return {**metrics, EVAL_DONE: json.dumps(done), EVAL_WARNINGS: json.dumps(warnings)}


def pending(tags: dict[str, str], ev: EvalConfig) -> list[str]:
    """The parts of `ev` (tasks, needles) a run with `tags` has not been evaluated on with
    these settings."""
    return [p for p in ev.parts if tags.get(tag_of(p)) != ev.settings(p)]


def gold_answers(tasks: list[str], manager):
    """gold(task name, doc) -> the text of the doc's gold answer, as its task defines it
    (a multiple-choice target is an index into its choices), for `memorize.use_answer`."""
    from lm_eval.tasks import get_task_dict

    objs = {}
    for name, task in get_task_dict(tasks, manager).items():
        objs[getattr(task, "config", None) and task.config.task or name] = task

    def gold(task_name: str, doc: dict) -> str:
        task = objs[task_name]
        target = task.doc_to_target(doc)
        if isinstance(target, list):
            target = target[0]
        if isinstance(target, int) and task.OUTPUT_TYPE == "multiple_choice":
            target = task.doc_to_choice(doc)[target]
        return f"{task.config.target_delimiter}{target}"

    return gold


def evaluate_runs(
    tracker,
    runs: list,
    ev: EvalConfig,
    metric: str,
    spec_file: str | None = None,
    device: str = "cpu",
    out: Callable[[str], None] = print,
) -> int:
    """Evaluate every run of `runs` (`RunData` of finished trials, with the history of their
    objective) on what it lacks of `ev`,
    logging to it at the last step of its objective `metric`; returns how many runs were
    evaluated. Tasks that cannot load stop it before any run is (TaskError)."""
    manager = check_tasks(ev.tasks, ev.include_path, ev.base_dir) if ev.tasks else None
    evaluated = 0
    for run in runs:
        run_id, name = run.run_id, run.name
        todo = pending(run.tags, ev)
        if not todo:
            out(f"{name} ({run_id[:8]}): already evaluated on {', '.join(ev.parts)}")
            continue
        trial = trial_from_run(run_id, tracker.uri, spec=spec_file, device=device)
        metrics, tags, warnings = eval_trial(trial, ev, todo, manager=manager, device=device)
        tags.update({f"{WARNING_PREFIX}.{k}": why for k, why in warnings.items()})
        for why in warnings.values():
            out(f"{name} ({run_id[:8]}): {why}")
        step = max((s for s, _ in run.history.get(metric, [])), default=0)
        if metrics:
            tracker.log(run_id, metrics, step=step)
        tracker.tags_batch(run_id, tags)
        shown = ", ".join(f"{k.removeprefix('eval/')} {v:.4g}" for k, v in metrics.items()
                          if not k.endswith("_stderr"))  # fmt: skip
        if shown:
            out(f"{name} ({run_id[:8]}): {shown}")
        evaluated += 1
    return evaluated
