"""The trial configs a spec's space can produce, as far as checks before a sweep need them:
the base config and the corners of the space (every combination of the values a grid or
choice lists and both ends of each range); the corpora they read, probed; and the `eval:`
tasks, loaded.
"""

from __future__ import annotations

import itertools

from nlsweep.config.space import candidate_values
from nlsweep.config.specfile import SpecError
from nlsweep.data.corpora import DataError
from nlsweep.data.registry import corpus_entry
from nlsweep.evaluation.harness import TaskError, check_tasks
from nlsweep.spec.loader import Spec

MAX_POINTS = 512
"""Points of the space whose data settings are checked (every combination of the values a
grid or choice lists and both ends of each range, up to this many)."""


def candidate_configs(spec: Spec) -> list:
    """The base config and the trial configs at the space's candidate points."""
    axes = {p: candidate_values(d) for p, d in spec.space.items()}
    points = itertools.islice(itertools.product(*axes.values()), MAX_POINTS)
    return [spec.base] + [spec.trial_config(dict(zip(axes, combo))) for combo in points]


def probe_corpora(spec: Spec) -> None:
    """Each distinct corpus the trials read passes its registered `probe` (its files exist
    and are readable, without tokenizing): `nlsweep validate`, and the first data check."""
    seen = set()
    for cfg in candidate_configs(spec):
        for part in cfg.data.phase_configs() or [cfg.data]:
            kind = corpus_entry(part.corpus)
            key = (part.corpus, part.path, part.text_field, part.separator, repr(part.options))
            if kind.probe is None or key in seen:
                continue
            seen.add(key)
            try:
                kind.probe(part)
            except DataError as e:
                raise SpecError.at(spec, "base.data", str(e)) from None


def check_eval(spec: Spec) -> None:
    """The `eval:` section can run on every trial: its tasks load in lm-eval (datasets
    too), every trial reads text (a tokenizer to encode the tasks with), and `context: carry`
    meets only kinds that carry state. `nlsweep validate`, and the sweep's preflight."""
    ev = spec.eval
    if ev is None:
        return
    from models.capabilities import member_of
    from models.registry import model_kind

    kinds = set()
    for cfg in candidate_configs(spec):
        kind = corpus_entry(cfg.data.corpus)
        if not (kind.is_text or cfg.data.phases):
            raise SpecError.at(spec, "eval", f"trials on text corpora (corpus {cfg.data.corpus} "
                               "has no tokenizer to encode the tasks' text with)")  # fmt: skip
        kinds.add(cfg.model.kind)
    classes = {k: model_kind(k).model_cls for k in sorted(kinds)}
    stateless = [k for k, c in classes.items() if not member_of(c, "carries_state", False)]
    if ev.context == "carry" and stateless:
        raise SpecError.at(spec, "eval.context", f"truncate: model kind {stateless[0]} keeps no "
                           "state between calls, so it cannot carry a long request")  # fmt: skip
    # what only some kinds can do is skipped for the others (a warning tag on their runs)
    if ev.memorize.steps and not any(member_of(c, "memorizes", False) for c in classes.values()):
        raise SpecError.at(spec, "eval.memorize.steps", f"0: no model kind of the sweep "
                           f"({', '.join(classes)}) declares an in-context memory "
                           "(memorizes = True) to replay a prompt through")  # fmt: skip
    if ev.needles is not None and ev.needles.modes == ["carry"] and stateless == list(classes):
        raise SpecError.at(spec, "eval.needles.modes", f"[fresh]: no model kind of the sweep "
                           f"({', '.join(classes)}) keeps state between calls, so none has a "
                           "carry mode")  # fmt: skip
    if not ev.tasks:
        return
    try:
        check_tasks(ev.tasks, ev.include_path, ev.base_dir)
    except TaskError as e:
        raise SpecError.at(spec, "eval.tasks", str(e)) from None
