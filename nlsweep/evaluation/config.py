"""The `eval:` section of a spec: lm-evaluation-harness tasks run on every trial's final
model once it finishes (`runs.py`), logged on its run as `eval/<task>/<metric>`.

    eval:
      tasks: [nlsweep_tiny_mc, piqa]   # lm-eval task names (its own, or task YAMLs below)
      include_path: [tasks]            # folders of task YAMLs, relative to the spec file
      base_dir: .                      # where a task YAML's relative data paths start
                                       # (default: the spec file's folder)
      limit: 256                       # documents per task (0: all)
      num_fewshot: 0
      batch_size: 16                   # requests per forward
      context: truncate                # or carry: a long request read in calls of max_length
      max_length: 0                    # the window (0: the trial's data.seq_len)
      seed: 0                          # lm-eval's seeds (few-shot sampling)
      memorize: {steps: 1, use_answer: false, reset: true}   # test-time memorization
      needles:                         # needle in a haystack (`needles.py`); optional
        lengths: [1024, 4096, 16384, 65536]
        modes: [carry, fresh]

Not part of the sweep's fingerprint: no trial trains differently. What a task's scores depend
on (`settings`) is recorded on the run beside them (tag `nlsweep.eval.<task>`), so that
`nlsweep eval` evaluates again only what has not been evaluated with the same settings.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

from models.common import require
from nlsweep.evaluation.needles import NeedleConfig

NEEDLES = "needles"
"""The part of an evaluation that the needles are (beside the lm-eval tasks)."""
TAG_EVAL = "nlsweep.eval"
"""Tag prefix on a trial run: `nlsweep.eval.<task>` = the settings its scores were made with."""


@dataclass
class MemorizeConfig:
    """`eval.memorize`: before each loglikelihood request, its prompt (and with `use_answer`
    the task's gold answer after it) is read `steps` times through the model, the state
    carried into the scoring read (`Scorer.memorized`); `reset: false` carries the state from
    one request to the next instead of starting each from a fresh one. Kinds that declare
    `memorizes` only (titans, hope, hope_attention, and plugins that declare it)."""

    steps: int = 0
    use_answer: bool = False
    reset: bool = True

    def __post_init__(self):
        require(self.steps >= 0, "steps", f"0 (off) or a positive integer, got {self.steps}")


@dataclass
class EvalConfig:
    """`eval:` section."""

    tasks: list[str] = field(default_factory=list)
    include_path: list[str] = field(default_factory=list)
    base_dir: str = ""
    limit: int = 0
    num_fewshot: int = 0
    batch_size: int = 16
    context: Literal["truncate", "carry"] = "truncate"
    max_length: int = 0
    seed: int = 0
    memorize: MemorizeConfig = field(default_factory=MemorizeConfig)
    needles: NeedleConfig | None = None

    def __post_init__(self):
        require(bool(self.tasks) or self.needles is not None, "tasks",
                "a non-empty list of lm-eval task names (or an eval.needles section)")  # fmt: skip
        require(len(set(self.tasks)) == len(self.tasks), "tasks", "each task once")
        for key in ("limit", "num_fewshot", "max_length"):
            value = getattr(self, key)
            require(value >= 0, key, f"0 or a positive integer, got {value}")
        require(self.batch_size >= 1, "batch_size", f"a positive integer, got {self.batch_size}")

    def label(self, task: str) -> str:
        """The name a task's scores go under: the task, with what memorization was asked
        for (`piqa.mem2`, `piqa.mem2.answer.carried`), so that a run keeps both."""
        m = self.memorize
        if not m.steps:
            return task
        return f"{task}.mem{m.steps}{'.answer' if m.use_answer else ''}" + (
            "" if m.reset else ".carried"
        )

    @property
    def parts(self) -> dict[str, str]:
        """What a run is evaluated on, by label: the tasks, and `needles` when configured."""
        out = {self.label(t): t for t in self.tasks}
        if self.needles is not None:
            out[NEEDLES] = NEEDLES
        return out

    def settings(self, part: str) -> str:
        """What the scores of `part` (a task, or `needles`) depend on besides the model, as
        the JSON its tag holds."""
        from importlib.metadata import version

        if part == NEEDLES:
            return json.dumps({"task": NEEDLES, **self.needles.settings()}, sort_keys=True)
        fields = asdict(self)
        for key in ("tasks", "include_path", "base_dir", "batch_size", "needles"):
            fields.pop(key)
        return json.dumps({"task": part, **fields, "lm_eval": version("lm_eval")},
                          sort_keys=True)  # fmt: skip


def tag_of(task: str) -> str:
    return f"{TAG_EVAL}.{task}"
