"""The training loop: one trial, runnable without Ray (`python -m nlsweep.train SPEC`).

A `Trainer` owns the complete training state as explicit data (model, per-level optimizers
with their clocks and accumulated gradients, recurrent state, RNG states, data cursor, step,
metric history); `state_dict()` / `load_state_dict()` round-trip it exactly. `Trainer.run()`
yields one metrics dict per evaluation, which the Ray trainable forwards to `tune.report`.
Evaluation always uses held-out text and its own recurrent state, so the training state is
left untouched (notes, pitfalls 1 and 7).
"""

from __future__ import annotations

import copy
import math
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from models import MODEL_KINDS
from models.cms import CMSConfig, CMSOptimizer
from models.common import ConfigError, check_ownership, detach_state, param_count, require
from models.optim import OptimConfig, build_optimizer
from models.surprise import SurpriseConfig, surprise_backward
from models.teach import IGNORE, TeachConfig
from nlsweep.config import build
from nlsweep.data import Corpus, DataConfig, load_corpus
from nlsweep.parallel import DataParallel, Forward
from nlsweep.phases import phase_metrics
from nlsweep.runtime import (
    DIVERGED,
    Diverged,
    memory_peaks,
    pick_device,
    rng_state,
    set_rng_state,
)

__all__ = ["DIVERGED", "Diverged", "Trainer", "TrialConfig"]

STATE_FORMAT = 2  # 2: the Titans memory state carries its chunk position and chunk-start memory
SECTIONS = ("model", "cms", "optim", "surprise", "teach", "data", "state", "train")
# Metrics a spec may name as its objective (all reported at every evaluation).
OBJECTIVES = (
    "val/bpc", "val/bpb", "val/loss", "val/ppl", "train/loss", "val/recall_acc", "val/passkey_acc",
    "val/mean_bpb",
)  # fmt: skip
TASK_OBJECTIVES = {"val/recall_acc": "mqar", "val/passkey_acc": "passkey"}  # only they report


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
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto = the GPU Ray assigned to the trial if any, else CPU."""
    threads: int = 0
    """torch CPU threads; 0 = one per CPU the trial was given (all cores outside Ray)."""
    diverge_above: float = 0.0
    """Stop the trial as diverged when its training loss exceeds this (0: only NaN or inf)."""
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

    def __post_init__(self):
        require(self.steps >= 1, "steps", f"a positive integer, got {self.steps}")
        require(self.eval_every >= 1, "eval_every", f"a positive integer, got {self.eval_every}")
        require(
            self.eval_batches >= 1, "eval_batches", f"a positive integer, got {self.eval_batches}"
        )
        require(0 <= self.seed < 2**32, "seed", f"an integer in [0, 2^32), got {self.seed}")
        require(self.threads >= 0, "threads", f"a non-negative integer, got {self.threads}")
        require(self.diverge_above >= 0, "diverge_above", f">= 0, got {self.diverge_above}")
        require(
            self.checkpoint_every >= 0 and self.checkpoint_every % self.eval_every == 0,
            "checkpoint_every",
            f"0 or a multiple of eval_every ({self.eval_every}), got {self.checkpoint_every}",
        )

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
    def from_dict(cls, d: dict) -> TrialConfig:
        if not isinstance(d, dict):
            raise ConfigError("base", f"expected a mapping of {', '.join(SECTIONS)}")
        for k in d:
            if k not in SECTIONS:
                raise ConfigError(k, f"unknown section; expected one of {', '.join(SECTIONS)}")
        raw_model = d.get("model") or {}
        kind = raw_model.get("kind", "nested_lstm") if isinstance(raw_model, dict) else None
        if kind not in MODEL_KINDS:
            raise ConfigError("model.kind", f"one of {', '.join(MODEL_KINDS)}, got {kind!r}")
        cfg_cls, model_cls = MODEL_KINDS[kind]
        cms = build(CMSConfig, d.get("cms"), "cms.")
        surprise = build(SurpriseConfig, d.get("surprise"), "surprise.")
        state = build(StateConfig, d.get("state"), "state.")
        if surprise.active and not hasattr(model_cls, "forward_levels"):
            raise ConfigError(
                "surprise.weights", f"unset: model kind {kind} has no surprise levels"
            )
        chain = getattr(model_cls, "uses_targets", False)  # hope kinds: a teach-driven chain
        if chain != bool(cms.token_periods):
            want = "a list such as [1, 4, 32, 128]" if chain else "unset: no CMS chain"
            raise ConfigError("cms.token_periods", f"{want} for model kind {kind}")
        data = build(DataConfig, d.get("data"), "data.")
        if cms.inner_chunk and data.seq_len % cms.inner_chunk:
            raise ConfigError(
                "cms.inner_chunk",
                f"a divisor of data.seq_len {data.seq_len}, got {cms.inner_chunk}",
            )
        if d.get("teach") and not chain:
            raise ConfigError("teach", f"unset: model kind {kind} has no teach signal")
        if state.mode != "reset" and not model_cls.carries_state:
            raise ConfigError(
                "state.mode", f"reset: model kind {kind} keeps no state between batches"
            )
        for name, section in (("cms", cms), ("surprise", surprise)):
            try:
                section.check_levels(model_cls.levels)
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


class Trainer:
    """One trial's training state and loop. With `dp` (several data-parallel workers, see
    `nlsweep/parallel.py`) every worker builds one and trains its rows of each batch; only
    rank 0's evaluations carry metrics, and `state_dict` is collective."""

    def __init__(
        self,
        cfg: TrialConfig,
        device: torch.device | None = None,
        corpus: Corpus | None = None,
        dp: DataParallel | None = None,
    ):
        self.cfg = cfg
        self.dp = dp or DataParallel()
        if cfg.data.batch_size % self.dp.world:
            raise ConfigError(
                "data.batch_size",
                f"a multiple of resources.workers ({self.dp.world}), got {cfg.data.batch_size}",
            )
        self.device = device or pick_device(cfg.train)
        seed = cfg.train.seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        self.corpus = corpus or load_corpus(cfg.data)
        vocab = len(self.corpus.vocab)
        cls = MODEL_KINDS[cfg.model.kind][1]
        self.targets = getattr(cls, "uses_targets", False)  # predicts, then learns in context
        extra = (cfg.cms, cfg.teach) if self.targets else ()
        self.model = cls(cfg.model, vocab, *extra).to(self.device)
        self.forward = self.dp.wrap(Forward(self.model))  # DDP with several workers
        if cfg.train.compile:
            self.forward = torch.compile(self.forward)
        self.state_dim = getattr(cls, "state_batch_dim", 0)  # where a state keeps its rows
        groups = self.model.level_parameters()
        check_ownership(self.model, groups)
        modules = self.model.level_modules()
        self.cms = CMSOptimizer(
            groups,
            cfg.cms,
            lambda level, ps, factor: build_optimizer(ps, cfg.optim, factor, modules[level]),
            schedule=lambda i: cfg.optim.lr_multiplier(i, cfg.train.steps),
            grad_clip=cfg.optim.grad_clip,
        )
        B, T = cfg.data.batch_size, cfg.data.seq_len
        self.batcher, self.heldout = self.corpus.batchers(B, T)
        # Text corpora: the bytes and characters each held-out target stands for, so loss
        # can be put per byte and per character whatever the tokenizer.
        units = getattr(self.corpus, "unit_batchers", None)
        self.heldout_units = units(B, T) if units else {}
        self.split = self.corpus  # whose held-out split the headline val/* metrics score
        self.phased = hasattr(self.corpus, "phase_at")
        self.extra_evals = self.corpus.extra_evals(B)
        self.step = 0
        if self.phased:
            self._follow_phase()
        # Recurrent training state carried between batches (None: zeros at the next batch).
        self.state = None
        self.state_resets = 0
        self.history: list[dict[str, float]] = []
        self._since_eval = {"loss": 0.0, "n": 0, "seconds": 0.0}
        self.elapsed = 0.0  # trial seconds, training and evaluation, across restarts

    # -- one outer step ------------------------------------------------------------------
    def train_step(self) -> float:
        t0 = time.perf_counter()
        x, y, streams_restart = self.batcher.next()
        rows = self.dp.rows(x.shape[0])
        x, y = x[rows].to(self.device), y[rows].to(self.device)
        sc = self.cfg.state
        if (
            sc.mode == "reset"
            or streams_restart
            or (sc.mode == "reset_every" and self.step % sc.every == 0)
        ):
            self.state_resets += self.state is not None
            self.state = None
        self.model.train()
        sp = self.cfg.surprise
        surprise = bool(sp.active) and self.step % sp.every_n == 0
        if self.targets:
            self.model.teach_scale = self.cfg.teach.scale_at(self.step, self.cfg.train.steps)
        mode = "levels" if surprise else "targets" if self.targets else "plain"
        with self.precision():
            try:
                out = self.forward(x, self.state, mode, y if self.targets else None)
            except torch._dynamo.exc.TorchDynamoException as e:
                first = str(e).strip().splitlines()[0][:200]
                raise RuntimeError(
                    f"train.compile: torch.compile failed for model kind {self.cfg.model.kind} "
                    f"({type(e).__name__}: {first}); set train.compile: false"
                ) from None
            logits, new_state, outputs = out if surprise else (*out, None)
            loss = F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE
            )
        if self.dp.active:
            loss, value = self._global_mean(loss, y)
        else:
            value = loss.item()  # the step's one host sync of the loss
        bound = self.cfg.train.diverge_above
        if not math.isfinite(value) or (bound and value > bound):
            # Before backward: nothing of the diverged step reaches the weights.
            raise Diverged(self.step + 1, value)
        with self.cms.fresh_gradient():
            if surprise:
                self._accumulate_surprise(surprise_backward(loss, outputs, sp))
            else:
                loss.backward()
        self.cms.flush_inputs(self.dp.sum_ if self.dp.active else None)
        self.cms.step()
        if sc.mode != "reset":
            self.state = detach_state(new_state)  # truncated BPTT: no gradient into the past
        self.step += 1
        self._since_eval["seconds"] += time.perf_counter() - t0
        self._since_eval["loss"] += value
        self._since_eval["n"] += 1
        return value

    def precision(self):
        """The autocast context of `train.precision` (a no-op for fp32)."""
        bf16 = self.cfg.train.precision == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)

    def _global_mean(self, loss: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
        """This worker's loss scaled so that DDP's gradient average is the global batch's mean
        loss, and that mean's value (every worker gets the same, so all stop together)."""
        n_r = (y != IGNORE).sum().to(torch.float64)
        totals = torch.stack([loss.detach().to(torch.float64) * n_r, n_r])
        self.dp.sum_([totals])
        n = float(totals[1])
        return loss * (self.dp.world * float(n_r) / max(n, 1.0)), float(totals[0]) / max(n, 1.0)

    def _accumulate_surprise(self, stats: dict[str, float]) -> None:
        acc = self._since_eval.setdefault("surprise", {})
        for k, v in stats.items():
            acc[k] = acc.get(k, 0.0) + v
        self._since_eval["surprise_steps"] = self._since_eval.get("surprise_steps", 0) + 1

    def sampled_windows(self, heldout=None):
        """The fixed windows of every periodic evaluation (of `heldout`, default the split):
        its first `train.eval_batches`, or all it has."""
        heldout = heldout or self.heldout
        n = min(self.cfg.train.eval_batches, heldout.windows_per_epoch)
        return (heldout.window(k) for k in range(n))

    def unit_windows(self, final: bool, window: int | None = None, units=None) -> dict:
        """{unit: its per-target counts, window by window}, laid out as the windows of the
        evaluation (`final_windows` when `final`, else the sampled ones) of `units` (unit
        batchers; default the held-out split's)."""
        whole = final and self.final_whole_split
        return {
            k: (y for _, y in (b.full_windows(window) if whole else self.sampled_windows(b)))
            for k, b in (self.heldout_units if units is None else units).items()
        }

    def _segments(self, windows):
        """`windows` cut along time into `data.eval_segment` tokens (unset: as they are);
        consecutive segments continue each row's stream, so `evaluate` carries the state
        from one to the next exactly when state.mode does."""
        for x, y in windows:
            n = self.cfg.data.eval_segment or x.shape[1]
            for i in range(0, x.shape[1], n):
                yield x[:, i : i + n], y[:, i : i + n]

    @property
    def final_whole_split(self) -> bool:
        """Whether the final evaluation scores the whole held-out split (a generated task's
        split has no end: its sampled batches are all of it)."""
        return self.cfg.train.final_eval == "full" and not self.corpus.generated

    def final_windows(self, window: int | None = None):
        """The windows of the final evaluation: the whole held-out split (in windows of
        `window` tokens, default seq_len) or the sampled ones."""
        if not self.final_whole_split:
            return self.sampled_windows()
        return self.heldout.full_windows(window)

    @torch.no_grad()
    def evaluate(self, windows=None, units: dict | None = None) -> float:
        """Mean held-out cross-entropy (nats/token) over `windows` (default the sampled
        ones), consecutive windows continuing each row's stream; sets `accuracy`,
        `eval_tokens`, `eval_nats` (the summed loss) and `eval_units` (the sum over the
        scored targets of each of `units`: {name: per-target counts, window by window})."""
        windows = self.sampled_windows() if windows is None else windows
        units = units or {}
        counted = dict.fromkeys(units, 0)
        was_training = self.model.training
        self.model.eval()
        total, count, hits = 0.0, 0, 0
        state = None  # evaluation's own state, never the training state (notes, pitfall 7)
        carry = self.cfg.state.mode != "reset"
        for x, y in windows:
            y = y.to(self.device)
            kw = {"targets": y} if self.targets else {}  # held-out text, predicted then learned
            with self.precision():
                logits, new_state = self.model(x.to(self.device), state if carry else None, **kw)
            logits = logits.float()
            state = new_state
            flat = y.reshape(-1)
            total += F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), flat, reduction="sum", ignore_index=IGNORE
            ).item()
            active = flat != IGNORE
            count += int(active.sum())
            for k, it in units.items():
                counted[k] += int(next(it).reshape(-1)[active.cpu()].sum())
            hits += int((logits.reshape(-1, logits.shape[-1]).argmax(-1) == flat)[active].sum())
        self.model.train(was_training)
        self.accuracy = hits / max(count, 1)  # of the positions the loss counts
        self.eval_tokens = count
        self.eval_nats, self.eval_units = total, counted
        return total / max(count, 1)

    def _follow_phase(self) -> None:
        """data.phases: point the headline held-out metrics at the current phase's split."""
        j = self.corpus.phase_at(self.step)
        B, T = self.cfg.data.batch_size, self.cfg.data.seq_len
        self.heldout, self.heldout_units = self.corpus.heldout(j, B, T)
        self.split = self.corpus.parts[j]

    def _metrics(self) -> dict[str, float]:
        B, T = self.cfg.data.batch_size, self.cfg.data.seq_len
        since = self._since_eval
        final = self.step == self.cfg.train.steps
        if self.phased:
            self._follow_phase()
        t0 = time.perf_counter()
        val_loss = self.evaluate(self.final_windows() if final else None, self.unit_windows(final))
        eval_s = time.perf_counter() - t0
        bits = self.eval_nats / math.log(2)
        per = self.eval_units
        m = {
            "step": self.step,
            "tokens": self.step * B * T,
            "train/loss": since["loss"] / max(since["n"], 1),
            "val/loss": val_loss,
            # bits per character of the held-out text (per token for a generated task)
            "val/bpc": bits / per["chars"] if per.get("chars") else val_loss / math.log(2),
            "val/ppl": math.exp(min(val_loss, 700.0)),  # per token
            "perf/tokens_per_s": since["n"] * B * T / max(since["seconds"], 1e-9),
            "perf/step_ms": 1000.0 * since["seconds"] / max(since["n"], 1),
            "model/params": float(param_count(self.model)),
            "data/val_overlap": self.split.val_overlap,
            "data/val_unk_rate": self.split.val_unk_rate,
            "data/val_tokens": float(self.eval_tokens),
            "perf/eval_s": eval_s,
            # 1: this evaluation scored the whole held-out split (the report marks it)
            "eval/full_split": float(final and self.final_whole_split),
        }
        if per.get("bytes"):
            m["val/bpb"] = bits / per["bytes"]  # bits per UTF-8 byte: any tokenizer's scale
        m.update(memory_peaks(self.device))
        if self.corpus.accuracy_key:
            m[self.corpus.accuracy_key] = self.accuracy
        for name, batcher in self.extra_evals.items():  # e.g. recall by context length
            self.evaluate(self._segments(self.sampled_windows(batcher)))
            m[name] = self.accuracy
        m.update(self.cms.metrics())
        if hasattr(self.model, "inner_metrics"):
            m.update(self.model.inner_metrics())
        if self.cfg.surprise.active:
            n = since.get("surprise_steps", 0)
            m["surprise/steps"] = float(n)  # steps since the last evaluation that applied it
            for k, v in since.get("surprise", {}).items():
                m[k] = v / max(n, 1)
        if self.phased:
            m.update(phase_metrics(self, m))
        m["state/resets"] = float(self.state_resets)
        for i, t in enumerate(self.state or ()):
            # mean over streams of the per-stream L2 norm; 0 for a state that was just reset
            m[f"state/norm_{self.model.state_names[i]}"] = float(t.norm(dim=-1).mean())
        self._since_eval = {"loss": 0.0, "n": 0, "seconds": 0.0}
        self.history.append(m)
        return m

    def run(self) -> Iterator[dict[str, float]]:
        """Train to `train.steps`, yielding the metrics of every evaluation."""
        tc = self.cfg.train
        while self.step < tc.steps:
            t0 = time.perf_counter()
            self.train_step()
            if self.step % tc.eval_every == 0 or self.step == tc.steps:
                if self.dp.rank:  # rank 0 evaluates and reports for the trial
                    self._since_eval = {"loss": 0.0, "n": 0, "seconds": 0.0}
                    self.elapsed += time.perf_counter() - t0
                    yield {"step": self.step}
                    continue
                metrics = self._metrics()
                self.elapsed += time.perf_counter() - t0
                metrics["perf/elapsed_s"] = self.elapsed
                yield metrics
            else:
                self.elapsed += time.perf_counter() - t0

    def warnings(self) -> dict[str, str]:
        """Configured mechanisms that never acted during the run (name -> why)."""
        check = getattr(self.model, "warnings", None)
        return {**(check(self.history) if check else {}), **self.cms.warnings()}

    # -- training state as data -----------------------------------------------------------
    def state_dict(self) -> dict:
        """The complete training state; with several workers a collective (every worker calls
        it) whose recurrent state has all B rows, as a one-worker trainer's would."""
        return {
            "format": STATE_FORMAT,
            "step": self.step,
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "cms": self.cms.state_dict(),
            "data": self.batcher.state_dict(),
            "recurrent": self.dp.gather_state(self.state, self.state_dim),
            "state_resets": self.state_resets,
            "rng": rng_state(),
            "history": list(self.history),
            "since_eval": copy.deepcopy(self._since_eval),
            "elapsed": self.elapsed,
        }

    def load_state_dict(self, sd: dict) -> None:
        if sd.get("format") != STATE_FORMAT:
            raise ValueError(f"training state format {sd.get('format')!r}, expected {STATE_FORMAT}")
        self.step = int(sd["step"])
        self.model.load_state_dict(sd["model"])
        self.cms.load_state_dict(sd["cms"])
        self.batcher.load_state_dict(sd["data"])
        recurrent = sd["recurrent"]
        recurrent = self.dp.shard_state(recurrent, self.state_dim)
        self.state = None if recurrent is None else tuple(t.to(self.device) for t in recurrent)
        self.state_resets = int(sd["state_resets"])
        set_rng_state(sd["rng"])
        self.history = list(sd["history"])
        self._since_eval = copy.deepcopy(sd["since_eval"])
        self.elapsed = float(sd["elapsed"])


if __name__ == "__main__":
    from nlsweep.cli import train_main

    sys.exit(train_main())
