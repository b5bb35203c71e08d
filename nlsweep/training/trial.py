"""A trial's typed config: one dataclass per spec section (`model`, `cms`, `optim`,
`surprise`, `teach`, `data`, `state`, `train`), each owned next to what it configures, built
from a plain dict with unknown keys refused; and the metrics a trial can report as its
objective (`objectives`, from what its evaluators declare: `evaluators.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import models.kinds  # noqa: F401 - registers the built-in model kinds
from models.capabilities import is_plain, member_of
from models.cms import CMSConfig
from models.common import ConfigError, require
from models.optim import OptimConfig
from models.registry import model_kind
from models.surprise import SurpriseConfig
from models.teach import TeachConfig
from nlsweep.config.builder import build, to_dict
from nlsweep.data.config import DataConfig
from nlsweep.data.registry import corpus_entry
from nlsweep.training.documents import check_resettable
from nlsweep.training.evaluators import build_options

SECTIONS = ("model", "cms", "optim", "surprise", "teach", "data", "state", "train")


@dataclass
class TrainConfig:
    """`train:` section."""

    steps: int = 300
    """Outer optimizer steps (batches) in the trial."""
    eval_every: int = 100
    """Evaluate on held-out data every this many steps, and after the last step."""
    eval_batches: int = 8
    """Held-out windows of B x seq_len tokens per periodic evaluation (the same windows
    every time)."""
    final_eval: Literal["full", "sampled"] = "full"
    """The evaluation after the last step: `full` scores the entire held-out split (every
    held-out token once, in B contiguous streams), `sampled` the `eval_batches` windows like
    every other evaluation. A generated task's held-out split is its `eval_batches` batches,
    so the two coincide there."""
    final_eval_tokens: int = 0
    """With final_eval full: at most this many held-out targets are scored (0: all): the
    first ceil(budget / B) tokens of each of the B contiguous rows the whole split is laid
    out in, so the budget is spread over the split and the score is still one pass per row."""
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto = the GPU Ray assigned to the trial if any, else CPU."""
    threads: int = 0
    """torch CPU threads; 0 = one per CPU the trial was given (all cores outside Ray)."""
    diverge_above: float = 0.0
    """Stop the trial as diverged when its training loss exceeds this (0: only NaN or inf)."""
    stall_s: float = 0.0
    """In a sweep, a trial that reports nothing for this many seconds is killed and retried
    from its checkpoint, then FAILED "stalled" (`nlsweep/execution/stalls.py`); 0: ten times
    its longest gap between reports so far, at least 600 s."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """bf16: the forward passes and the loss run under `torch.autocast` with bfloat16 (on
    CPU too); weights, gradients, optimizer moments and delta-rule statistics stay float32."""
    compile: bool = False
    """`torch.compile` the training forward (inductor: on CPU it needs a C++ compiler).
    Evaluation runs eagerly. A model that cannot compile stops the trial with one line."""
    checkpoint_every: int = 0
    """In a sweep, save the complete training state every this many steps (a multiple of
    eval_every, since a checkpoint travels with an evaluation's report) and after the last
    step; 0: at every evaluation. A resumed or retried trial continues from its newest one."""
    evaluators: list[str] | dict[str, dict[str, Any] | None] | None = None
    """Registered evaluators run at every evaluation after the built-in held-out scores
    (`nlsweep/training/evaluators.py`): a list of names, or names -> their options. Their
    declared metrics can be the sweep's objective."""

    def __post_init__(self):
        require(self.steps >= 1, "steps", f"a positive integer, got {self.steps}")
        require(self.eval_every >= 1, "eval_every", f"a positive integer, got {self.eval_every}")
        require(self.final_eval_tokens >= 0, "final_eval_tokens", "0 (the whole split) or a "
                f"positive number of tokens, got {self.final_eval_tokens}")  # fmt: skip
        require(self.final_eval == "full" or not self.final_eval_tokens, "final_eval_tokens",
                "unset with final_eval sampled (it budgets the full final evaluation)")  # fmt: skip
        require(
            self.eval_batches >= 1, "eval_batches", f"a positive integer, got {self.eval_batches}"
        )
        require(0 <= self.seed < 2**32, "seed", f"an integer in [0, 2^32), got {self.seed}")
        require(self.threads >= 0, "threads", f"a non-negative integer, got {self.threads}")
        require(self.diverge_above >= 0, "diverge_above", f">= 0, got {self.diverge_above}")
        require(self.stall_s == 0 or self.stall_s >= 1, "stall_s", "0 (automatic) or at least "
                f"1 second, got {self.stall_s}")  # fmt: skip
        require(
            self.checkpoint_every >= 0 and self.checkpoint_every % self.eval_every == 0,
            "checkpoint_every",
            f"0 or a multiple of eval_every ({self.eval_every}), got {self.checkpoint_every}",
        )
        self.evaluators = build_options(self.evaluators) or None

    def checkpoint_due(self, step: int) -> bool:
        """Whether the evaluation after `step` carries a checkpoint."""
        every = self.checkpoint_every or self.eval_every
        return step % every == 0 or step == self.steps


@dataclass
class StateConfig:
    """`state:` section: the recurrent state between consecutive training batches."""

    mode: Literal["reset", "persistent", "reset_every"] = "reset"
    """reset: zero state before every batch. persistent: carry (h, c) along each stream,
    detached after every step (truncated BPTT), reset only when the streams restart.
    reset_every: like persistent, plus a reset every `every` steps."""
    every: int = 0
    """reset_every: steps between resets (only with that mode)."""
    reset_at: Literal["document"] | None = None
    """document: also reset a row's state where its stream enters a new document (at the
    corpus's end-of-document token), inside a window as well as between windows, in training
    and evaluation (`nlsweep/training/documents.py`); counted in state/document_resets."""

    def __post_init__(self):
        if self.mode == "reset_every":
            require(self.every >= 1, "every", f"a positive number of steps, got {self.every}")
        else:
            require(self.every == 0, "every", f"unset unless mode is reset_every ({self.mode})")


@dataclass
class TrialConfig:
    """One complete trial: the spec's `base:` with a point of its `space:` applied."""

    model: Any
    cms: CMSConfig = field(default_factory=CMSConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    surprise: SurpriseConfig = field(default_factory=SurpriseConfig)
    teach: TeachConfig = field(default_factory=TeachConfig)
    data: DataConfig = field(default_factory=DataConfig)
    state: StateConfig = field(default_factory=StateConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_recorded(cls, d: dict) -> TrialConfig:
        """The config a run recorded (`to_dict` of it, every field written out), back. Fields
        at their defaults are left out, so that a section a kind refuses when given (teach,
        for a kind without a teach signal) is not given."""
        if not isinstance(d, dict) or not isinstance(d.get("model"), dict):
            raise ConfigError("model", "a recorded trial config with a model section")
        defaults = {"cms": CMSConfig, "optim": OptimConfig, "surprise": SurpriseConfig,
                    "teach": TeachConfig, "data": DataConfig, "state": StateConfig,
                    "train": TrainConfig}  # fmt: skip
        raw: dict = {"model": d["model"]}
        for name, section in defaults.items():
            default = to_dict(section())
            missing = object()
            kept = {k: v for k, v in (d.get(name) or {}).items() if default.get(k, missing) != v}
            if kept:
                raw[name] = kept
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, d: dict) -> TrialConfig:
        if not isinstance(d, dict):
            raise ConfigError("base", f"expected a mapping of {', '.join(SECTIONS)}")
        for k in d:
            if k not in SECTIONS:
                raise ConfigError(k, f"unknown section; expected one of {', '.join(SECTIONS)}")
        raw_model = d.get("model") or {}
        kind = raw_model.get("kind", "nested_lstm") if isinstance(raw_model, dict) else None
        entry = model_kind(kind)
        cfg_cls, model_cls, who = entry.config_cls, entry.model_cls, entry.qualname
        cms = build(CMSConfig, d.get("cms"), "cms.")
        surprise = build(SurpriseConfig, d.get("surprise"), "surprise.")
        state = build(StateConfig, d.get("state"), "state.")
        if surprise.active and member_of(model_cls, "forward_levels") is None:
            raise ConfigError("surprise.weights", f"unset: model kind {kind} has no surprise "
                              f"levels ({who} has no forward_levels)")  # fmt: skip
        chain = member_of(model_cls, "uses_targets", False)  # hope kinds: a teach-driven chain
        if chain != bool(cms.token_periods):
            want = ("a list such as [1, 4, 32, 128]" if chain
                    else f"unset: no CMS chain ({who} has no uses_targets)")  # fmt: skip
            raise ConfigError("cms.token_periods", f"{want} for model kind {kind}")
        data = build(DataConfig, d.get("data"), "data.")
        if cms.inner_chunk and data.seq_len % cms.inner_chunk:
            raise ConfigError(
                "cms.inner_chunk",
                f"a divisor of data.seq_len {data.seq_len}, got {cms.inner_chunk}",
            )
        if d.get("teach") and not chain:
            raise ConfigError("teach", f"unset: model kind {kind} has no teach signal "
                              f"({who} has no uses_targets)")  # fmt: skip
        if state.mode != "reset" and not member_of(model_cls, "carries_state", False):
            missing = "carries_state and init_state" if is_plain(model_cls) else "carries_state"
            raise ConfigError("state.mode", f"reset: model kind {kind} keeps no state between "
                              f"batches ({who} has no {missing})")  # fmt: skip
        if state.reset_at:
            check_resettable(model_cls, kind, surprise.active)
            if corpus_entry(data.corpus).generated:
                raise ConfigError("state.reset_at", f"unset: corpus {data.corpus} is a "
                                  "generated task, not documents")  # fmt: skip
        for name, section in (("cms", cms), ("surprise", surprise)):
            try:
                section.check_levels(member_of(model_cls, "levels"))
            except ConfigError as e:
                raise ConfigError(f"{name}.{e.key}", e.expected) from None
        optim = build(OptimConfig, d.get("optim"), "optim.")
        train = build(TrainConfig, d.get("train"), "train.")
        if data.phases:
            _fit_phases(data, train, d.get("train") or {})
        try:
            optim.check_steps(train.steps)
        except ConfigError as e:
            raise ConfigError(f"optim.{e.key}", e.expected) from None
        return cls(
            model=build(cfg_cls, raw_model, "model."),
            cms=cms,
            optim=optim,
            surprise=surprise,
            teach=build(TeachConfig, d.get("teach"), "teach."),
            data=data,
            state=state,
            train=train,
        )


def _fit_phases(data: DataConfig, train: TrainConfig, raw_train: dict) -> None:
    """train.steps is the phases' total, and an evaluation ends every phase."""
    total = sum(p.steps for p in data.phases)
    if "steps" in raw_train and train.steps != total:
        raise ConfigError("train.steps", f"unset or the phases' total {total}, got {train.steps}")
    for i, p in enumerate(data.phases):
        if p.steps % train.eval_every:
            raise ConfigError(f"data.phases[{i}].steps", f"a multiple of train.eval_every "
                              f"({train.eval_every}) so that an evaluation ends the phase, "
                              f"got {p.steps}")  # fmt: skip
    train.steps = total
