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
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from models.capabilities import build_model
from models.cms import CMSOptimizer
from models.common import ConfigError, check_ownership, detach_state, param_count
from models.optim import build_optimizer
from models.registry import model_kind
from models.surprise import surprise_backward
from models.teach import IGNORE
from nlsweep.data.load import load_corpus
from nlsweep.data.streams import Corpus, require_documents
from nlsweep.training.documents import DocumentResets
from nlsweep.training.evaluators import EvalContext, declared, running
from nlsweep.training.parallel import DataParallel, Forward
from nlsweep.training.runtime import (
    Diverged,
    check_precision,
    compile_forward,
    memory_peaks,
    pick_device,
    rng_state,
    set_rng_state,
)
from nlsweep.training.trial import TrialConfig

CHECKPOINT_ONLY = "checkpoint_only"
"""Key of what `Trainer.run` yields when asked to save between evaluations."""
STATE_FORMAT = 2  # 2: the Titans memory state carries its chunk position and chunk-start memory


class Trainer:
    """One trial's training state and loop. With `dp` (several data-parallel workers, see
    `nlsweep/training/parallel.py`) every worker builds one and trains its rows of each batch; only
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
        kind = model_kind(cfg.model.kind)
        self.model = build_model(kind, cfg.model, vocab, cfg.cms, cfg.teach).to(self.device)
        check_precision(cfg.train.precision, self.device, self.model)
        cls = type(self.model)
        self.targets = getattr(cls, "uses_targets", False)  # predicts, then learns in context
        self.resets = None
        if cfg.state.reset_at:
            eod = require_documents(self.corpus.vocab, "state.reset_at", cfg.data.corpus)
            self.resets = DocumentResets(self.model, eod)
        self.forward = self.dp.wrap(Forward(self.model, self.resets))  # DDP with several workers
        if cfg.train.compile:
            self.forward = compile_forward(self.forward, self)
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
        shuffle = {"shuffle_seed": cfg.data.shuffle_seed} if cfg.data.shuffle else {}
        self.batcher, self.heldout = self.corpus.batchers(B, T, **shuffle)
        # Text corpora: the bytes and characters each held-out target stands for, so loss
        # can be put per byte and per character whatever the tokenizer.
        units = getattr(self.corpus, "unit_batchers", None)
        self.heldout_units = units(B, T) if units else {}
        self.split = self.corpus  # whose held-out split the headline val/* metrics score
        self.phased = hasattr(self.corpus, "phase_at")
        self.extra_evals = self.corpus.extra_evals(B)
        self.evaluators = running(cfg)
        self.objectives = declared(cfg)  # each evaluator's metrics: it must report them
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
        if not self.model.training:  # train() walks every module: only after an evaluation
            self.model.train()
        sp = self.cfg.surprise
        surprise = bool(sp.active) and self.step % sp.every_n == 0
        if self.targets:
            self.model.teach_scale = self.cfg.teach.scale_at(self.step, self.cfg.train.steps)
        mode = "levels" if surprise else "targets" if self.targets else "plain"
        with self.precision():
            try:
                out = self.forward(x, self.state, mode, y if self.targets else None)
            except torch._dynamo.exc.FailOnRecompileLimitHit:
                raise RuntimeError(
                    f"train.compile: more graphs of the training forward than "
                    f"torch._dynamo.config.recompile_limit "
                    f"({torch._dynamo.config.recompile_limit}) allows in one process, where "
                    f"every compiled trainer alive counts; raise it, or set train.compile: false"
                ) from None
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
        tc = self.cfg.train
        self.cms.step(read_at=min((self.step // tc.eval_every + 1) * tc.eval_every, tc.steps))
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
        whole = final and self.final_eval_full
        cols = self.final_columns
        return {
            k: (y for _, y in (b.full_windows(window, cols) if whole else self.sampled_windows(b)))
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
    def final_eval_full(self) -> bool:
        """Whether the final evaluation scores the split laid out whole, in B rows, rather
        than the sampled windows (a generated task's split has no end: its sampled batches
        are all of it)."""
        return self.cfg.train.final_eval == "full" and not self.corpus.generated

    @property
    def final_columns(self) -> int | None:
        """Tokens of each row the final evaluation scores under `train.final_eval_tokens`
        (None: every one)."""
        budget = self.cfg.train.final_eval_tokens
        if not budget or not self.final_eval_full:
            return None
        cols = -(-budget // self.cfg.data.batch_size)
        return cols if cols < self.heldout.full_columns() else None

    @property
    def final_whole_split(self) -> bool:
        """Whether the final evaluation scores every held-out token."""
        return self.final_eval_full and self.final_columns is None

    def final_windows(self, window: int | None = None):
        """The windows of the final evaluation: the held-out split laid out whole (in
        windows of `window` tokens, default seq_len; within the token budget) or the
        sampled ones."""
        if not self.final_eval_full:
            return self.sampled_windows()
        return self.heldout.full_windows(window, self.final_columns)

    @torch.no_grad()
    def predictions(self, windows):
        """(float32 logits, targets) per window of `windows`, in eval mode, consecutive
        windows continuing each row's stream under evaluation's own recurrent state (never
        the training state: notes, pitfall 7), carried exactly when state.mode carries."""
        was_training = self.model.training
        self.model.eval()
        state = None
        carry = self.cfg.state.mode != "reset"
        try:
            for x, y in windows:
                y = y.to(self.device)
                kw = {"targets": y} if self.targets else {}  # held-out text, predicted then learned
                x = x.to(self.device)
                with self.precision():
                    if self.resets is None:
                        logits, state = self.model(x, state if carry else None, **kw)
                    else:
                        logits, state = self.resets(
                            lambda xs, s, ts: self.model(
                                xs, s, **({"targets": ts} if ts is not None else {})
                            ),
                            x,
                            state if carry else None,
                            kw.get("targets"),
                            count=False,
                        )
                yield logits.float(), y
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def evaluate(self, windows=None, units: dict | None = None) -> float:
        """Mean held-out cross-entropy (nats/token) over `windows` (default the sampled
        ones), consecutive windows continuing each row's stream; sets `accuracy`,
        `eval_tokens`, `eval_nats` (the summed loss) and `eval_units` (the sum over the
        scored targets of each of `units`: {name: per-target counts, window by window})."""
        windows = self.sampled_windows() if windows is None else windows
        units = units or {}
        counted = dict.fromkeys(units, 0)
        total, count, hits = 0.0, 0, 0
        for logits, y in self.predictions(windows):
            flat = y.reshape(-1)
            total += F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), flat, reduction="sum", ignore_index=IGNORE
            ).item()
            active = flat != IGNORE
            count += int(active.sum())
            for k, it in units.items():
                counted[k] += int(next(it).reshape(-1)[active.cpu()].sum())
            hits += int((logits.reshape(-1, logits.shape[-1]).argmax(-1) == flat)[active].sum())
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
        m = {"step": self.step, "tokens": self.step * B * T}
        t0 = time.perf_counter()
        was_training = self.model.training
        self.model.eval()
        try:
            for ev, options in self.evaluators:  # the built-in held-out scores first
                with torch.no_grad():
                    out = ev.evaluate(EvalContext(self, final, options))
                m.update(self._checked(ev, out, m))
        finally:
            self.model.train(was_training)
        eval_s = time.perf_counter() - t0
        m.update({
            "perf/tokens_per_s": since["n"] * B * T / max(since["seconds"], 1e-9),
            "perf/step_ms": 1000.0 * since["seconds"] / max(since["n"], 1),
            "model/params": float(param_count(self.model)),
            "perf/eval_s": eval_s,
        })  # fmt: skip
        m.update(memory_peaks(self.device))
        m.update(self.cms.metrics())
        if hasattr(self.model, "inner_metrics"):
            m.update(self.model.inner_metrics())
        if self.cfg.surprise.active:
            n = since.get("surprise_steps", 0)
            m["surprise/steps"] = float(n)  # steps since the last evaluation that applied it
            for k, v in since.get("surprise", {}).items():
                m[k] = v / max(n, 1)
        m["state/resets"] = float(self.state_resets)
        order = getattr(self.batcher, "order", None)
        if order is not None:  # data.shuffle: the documents it orders, the epoch it is in
            m["data/shuffled_documents"] = float(len(order))
            m["data/epoch"] = float(self.batcher.epoch)
        if self.resets is not None:
            m["state/document_resets"] = float(self.resets.resets)  # rows reset in training
        for i, t in enumerate(self.state or ()):
            # mean over streams of the per-stream L2 norm; 0 for a state that was just reset
            m[f"state/norm_{self.model.state_names[i]}"] = float(t.norm(dim=-1).mean())
        self._since_eval = {"loss": 0.0, "n": 0, "seconds": 0.0}
        self.history.append(m)
        return m

    def _checked(self, ev, out, so_far: dict) -> dict[str, float]:
        """An evaluator's metrics, refused in one line unless they are numbers, hold every
        metric it declared and take no name already reported in this evaluation."""
        if not isinstance(out, dict):
            raise RuntimeError(f"evaluator {ev.name} ({ev.source}) returned "
                               f"{type(out).__name__}; expected {{metric: number}}")  # fmt: skip
        missing = sorted(set(self.objectives.get(ev.name, ())) - set(out))
        if missing:
            raise RuntimeError(f"evaluator {ev.name} ({ev.source}) did not report "
                               f"{', '.join(missing)}, which it declares")  # fmt: skip
        twice = sorted(set(out) & set(so_far))
        if twice:
            raise RuntimeError(f"evaluator {ev.name} ({ev.source}) reports {', '.join(twice)}, "
                               "already reported in this evaluation")  # fmt: skip
        try:
            return {k: float(v) for k, v in out.items()}
        except (TypeError, ValueError):
            bad = next(k for k, v in out.items() if not isinstance(v, (int, float)))
            raise RuntimeError(
                f"evaluator {ev.name} ({ev.source}): {bad} is "
                f"{type(out[bad]).__name__}, expected a number"
            ) from None

    def run(self, save_now: Callable[[], bool] | None = None) -> Iterator[dict[str, float]]:
        """Train to `train.steps`, yielding the metrics of every evaluation. `save_now`,
        asked after every other step: True yields `{"step": N, CHECKPOINT_ONLY: 1.0}`, no
        evaluation, for the caller to save the state at that step (a stop on a signal)."""
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
                if save_now is not None and save_now():
                    yield {"step": self.step, CHECKPOINT_ONLY: 1.0}

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
            "document_resets": self.resets.resets if self.resets is not None else 0,
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
        if self.resets is not None:
            self.resets.resets = int(sd.get("document_resets", 0))
        set_rng_state(sd["rng"])
        self.history = list(sd["history"])
        self._since_eval = copy.deepcopy(sd["since_eval"])
        self.elapsed = float(sd["elapsed"])
