"""The registry of evaluators: what scores a trial at each of its evaluations, and the
metrics each declares. The objectives a spec may name are exactly the declared metrics of
the evaluators that trial runs (`objectives`), so a plugin's `val/my_metric` can be one.

Contract of an evaluator (docs/extending.md):
    evaluate(ctx) -> {metric: float}   ctx is an `EvalContext`: the model in eval mode under
                                       torch.no_grad, its held-out windows, their logits
    metrics(cfg)  -> {metric: "min" | "max"}
                                       the metrics it emits at every evaluation, each with
                                       its better direction; it may emit more (diagnostics),
                                       but never fewer, and never a name another evaluator
                                       emitted in the same evaluation (both raise)
    options                            a dataclass typing `train.evaluators.<name>`
An evaluator reads and never writes the training state: it scores with its own recurrent
state (`ctx.predictions`) and leaves the model's weights, the data cursor and the RNG alone.

`heldout`, the built-in, runs at every evaluation and registers here like a plugin: the
held-out loss in nats, bits per character and byte, perplexity, the corpus's own metrics
(the accuracy of a generated task, the phases' mean) and the training loss since the last
evaluation. The others run when `train.evaluators` names them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from models.errors import ConfigError
from models.registry import RegistryError, source_of
from models.teach import IGNORE
from nlsweep.config.builder import build
from nlsweep.data.phases import phase_metrics
from nlsweep.data.registry import corpus_entry, corpus_names

__all__ = [
    "EvalContext", "Evaluator", "build_options", "declared", "evaluator", "evaluator_names",
    "objectives", "register_evaluator", "running",
]  # fmt: skip


@dataclass(frozen=True)
class Evaluator:
    name: str
    evaluate: Callable
    metrics: Callable
    options: type | None
    always: bool
    """Runs at every evaluation of every trial without being named (the built-in only)."""
    source: str


_EVALUATORS: dict[str, Evaluator] = {}


def register_evaluator(name: str, evaluate: Callable | None = None, *, metrics,
                       options: type | None = None, always: bool = False):  # fmt: skip
    """Register evaluator `name`: `register_evaluator("topk", fn, metrics={"val/top5_acc":
    "max"})`, or as a decorator of `fn`. `metrics` is a mapping, or a function of the trial
    config returning one (when names follow options or data). Twice is refused, naming both."""
    if not isinstance(name, str) or not name.isidentifier():
        raise RegistryError(f"evaluator {name!r}: a Python identifier such as top_k")
    if options is not None and not (
        isinstance(options, type) and dataclasses.is_dataclass(options)
    ):
        raise RegistryError(f"evaluator {name}: options must be a dataclass, got {options!r}")
    if isinstance(metrics, dict):
        fixed = dict(metrics)
        metrics = lambda cfg: fixed  # noqa: E731 - the declaration as the callable form
        _check_directions(name, fixed)
    elif not callable(metrics):
        raise RegistryError(f"evaluator {name}: metrics must map metric names to min or max, "
                            "or be a function of the trial config returning that")  # fmt: skip

    def add(fn: Callable) -> Callable:
        if not callable(fn):
            raise RegistryError(f"evaluator {name}: evaluate must be callable, got {fn!r}")
        entry = Evaluator(name, fn, metrics, options, always, source_of(fn))
        old = _EVALUATORS.get(name)
        if old is not None and old.evaluate is not fn:
            raise RegistryError(
                f"evaluator {name} registered twice: by {old.source} and by {entry.source}"
            )
        _EVALUATORS[name] = entry
        return fn

    return add if evaluate is None else add(evaluate)


def _check_directions(name: str, declared) -> dict[str, str]:
    if not isinstance(declared, dict):
        raise RegistryError(f"evaluator {name}: metrics returned {type(declared).__name__}; "
                            "expected a mapping of metric names to min or max")  # fmt: skip
    for metric, better in declared.items():
        if not isinstance(metric, str) or better not in ("min", "max"):
            raise RegistryError(f"evaluator {name}: metric {metric!r} is better at min or "
                                f"max, got {better!r}")  # fmt: skip
    return declared


def evaluator(name, key: str = "train.evaluators") -> Evaluator:
    if name not in _EVALUATORS:
        raise ConfigError(key, f"one of {', '.join(evaluator_names())}, got {name!r}")
    return _EVALUATORS[name]


def evaluator_names() -> list[str]:
    """The evaluators a spec can name (every registered one but those that always run)."""
    return [n for n, e in _EVALUATORS.items() if not e.always]


def build_options(names) -> dict[str, Any]:
    """`train.evaluators` (a list of names, or names -> options) checked and typed: {name:
    its options dataclass instance, or None}. Errors are ConfigError at `evaluators...`."""
    if names is None:
        return {}
    if isinstance(names, list):
        names = dict.fromkeys(names)
    out = {}
    for name, opts in names.items():
        ev = evaluator(name, "evaluators")
        if ev.always:
            raise ConfigError("evaluators", f"not {name}: it runs at every evaluation")
        if ev.options is None:
            if opts:
                raise ConfigError(f"evaluators.{name}", "unset: it takes no options")
            out[name] = None
        else:
            out[name] = opts if isinstance(opts, ev.options) else build(
                ev.options, opts or {}, f"evaluators.{name}.")  # fmt: skip
    return out


def running(cfg) -> list[tuple[Evaluator, Any]]:
    """(evaluator, options) of every evaluator a trial runs, the always-on ones first."""
    always = [(e, None) for e in _EVALUATORS.values() if e.always]
    return always + [(_EVALUATORS[n], o) for n, o in (cfg.train.evaluators or {}).items()]


def declared(cfg) -> dict[str, dict[str, str]]:
    """{evaluator: {metric: better direction}} for every evaluator trial config `cfg` runs."""
    return {ev.name: _check_directions(ev.name, ev.metrics(_WithOptions(cfg, opts)))
            for ev, opts in running(cfg)}  # fmt: skip


def objectives(cfg) -> dict[str, str]:
    """{metric: better direction} of everything trial config `cfg` reports at every
    evaluation: the metrics its evaluators declare."""
    out: dict[str, str] = {}
    for metrics in declared(cfg).values():
        out.update(metrics)
    return out


def reporters(metric: str, cfg) -> list[str]:
    """Which other registered corpora and evaluators declare `metric` for a config like
    `cfg` (theirs with default options): the hint when a spec names what its trials lack."""
    who = []
    for name in corpus_names():
        try:
            if name != cfg.data.corpus and metric in corpus_entry(name).metrics(cfg.data):
                who.append(f"corpus {name}")
        except Exception:  # noqa: BLE001, S112 - a declaration that needs its own data
            continue
    for ev in _EVALUATORS.values():
        try:
            opts = build(ev.options, {}) if ev.options else None
            if not ev.always and metric in ev.metrics(_WithOptions(cfg, opts)):
                who.append(f"evaluator {ev.name} (train.evaluators)")
        except Exception:  # noqa: BLE001, S112 - options without defaults, say
            continue
    return who


class _WithOptions:
    """A trial config seen by one evaluator's `metrics`: `.options` is that evaluator's."""

    def __init__(self, cfg, options):
        self._cfg, self.options = cfg, options

    def __getattr__(self, name):
        return getattr(self._cfg, name)


@dataclass
class EvalContext:
    """What an evaluator sees of the trial at one evaluation."""

    trainer: Any
    final: bool
    """The evaluation after the last step (whose windows are the whole held-out split under
    train.final_eval full)."""
    options: Any = None
    """This evaluator's options (its dataclass instance), or None."""
    IGNORE = IGNORE
    """The target of a padded position, which no metric should count."""

    @property
    def model(self) -> torch.nn.Module:
        return self.trainer.model

    @property
    def cfg(self):
        return self.trainer.cfg

    @property
    def device(self) -> torch.device:
        return self.trainer.device

    @property
    def step(self) -> int:
        return self.trainer.step

    def windows(self):
        """This evaluation's held-out (input, target) windows: the sampled ones, or the whole
        split at a full final evaluation; consecutive windows continue each row's stream."""
        return self.trainer.final_windows() if self.final else self.trainer.sampled_windows()

    def predictions(self, windows=None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(logits (B, T, V) float32, targets (B, T)) per window of `windows` (default
        `self.windows()`), the recurrent state carried across windows as state.mode says;
        targets equal to `models.teach.IGNORE` are padding, not text."""
        return self.trainer.predictions(self.windows() if windows is None else windows)


def heldout(ctx: EvalContext) -> dict[str, float]:
    """The built-in: held-out loss and its scales, the corpus's metrics, the training loss."""
    t = ctx.trainer
    since = t._since_eval
    val_loss = t.evaluate(ctx.windows(), t.unit_windows(ctx.final))
    bits, per = t.eval_nats / math.log(2), t.eval_units
    m = {
        "train/loss": since["loss"] / max(since["n"], 1),
        "val/loss": val_loss,
        # bits per character of the held-out text (per token for a generated task)
        "val/ppl": math.exp(min(val_loss, 700.0)),  # per token
        "data/val_overlap": t.split.val_overlap,
        "data/val_unk_rate": t.split.val_unk_rate,
        "data/val_tokens": float(t.eval_tokens),
        # 1: this evaluation scored the whole held-out split (the report marks it)
        "eval/full_split": float(ctx.final and t.final_whole_split),
    }
    if per.get("chars"):
        m["val/bpc"] = bits / per["chars"]
    elif t.corpus.generated:
        m["val/bpc"] = val_loss / math.log(2)  # a task's tokens are its characters
    if ctx.final and t.final_columns is not None:  # the budget, spread over B rows
        m["eval/final_budget_columns"] = float(t.final_columns)
    if per.get("bytes"):
        m["val/bpb"] = bits / per["bytes"]  # bits per UTF-8 byte: any tokenizer's scale
    if t.corpus.accuracy_key:
        m[t.corpus.accuracy_key] = t.accuracy
    for name, batcher in t.extra_evals.items():  # e.g. recall by context length
        t.evaluate(t._segments(t.sampled_windows(batcher)))
        m[name] = t.accuracy
    if t.phased:
        m.update(phase_metrics(t, m))
    return m


def heldout_metrics(cfg) -> dict[str, str]:
    kind = corpus_entry(cfg.data.corpus)
    # bits per character and byte need the text each token stands for (a task's tokens are
    # its characters; pre-tokenized ids stand for text nlsweep never sees)
    units = (
        () if kind.ids is not None else ("val/bpc",) if kind.generated else ("val/bpc", "val/bpb")
    )
    out = dict.fromkeys((*units, "val/loss", "val/ppl", "train/loss"), "min")
    return {**out, **kind.metrics(cfg.data)}


register_evaluator("heldout", heldout, metrics=heldout_metrics, always=True)
