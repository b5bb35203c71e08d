"""Scoring and extending token sequences with a trial's model: what lm-evaluation-harness asks
of a language model (`adapter.py`) and what the needles read (`needles.py`), in torch alone.

Notation
    ctx, cont   a request's context and continuation token ids; whole = ctx + cont
    W           the call length: tokens the model reads in one forward (default: the trial's
                data.seq_len, the length it was trained on)
    x, y        inputs whole[:-1] and targets whole[1:]
    score       log p(cont | ctx) = sum over the continuation's positions t of
                log_softmax(logits_t)[y_t]; greedy: argmax(logits_t) == y_t at every one
    truncate    only the last W inputs are read: the left of a longer context is dropped
                (lm-eval's rule for a causal LM with a window)
    carry       every input is read, in calls of W, with the model's recurrent state carried
                from one call to the next (kinds that carry state): the memory, not the
                window, holds what came before, and peak memory is bounded by W

Rows of a batch are right-padded. The models are causal, so a row's scores depend neither on
the padding after it nor on the other rows of its batch, and any batch size gives the same
numbers (the tests check both). In-context learners (`uses_targets`) learn from the targets
as they read, as in held-out evaluation; a padded position's target is IGNORE, so it teaches
nothing. Every request starts from a fresh state.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.teach import IGNORE

CONTEXT_MODES = ("truncate", "carry")


class ScoringError(ValueError):
    """A request or setting the scorer cannot serve; the message is one line."""


@dataclass
class Scorer:
    """Batched log-likelihoods and greedy continuations of one model (in eval mode)."""

    model: nn.Module
    window: int
    context: str = "truncate"
    batch_size: int = 16
    device: torch.device = torch.device("cpu")

    def __post_init__(self):
        if self.context not in CONTEXT_MODES:
            raise ScoringError(f"context: truncate or carry, got {self.context!r}")
        if self.window < 1 or self.batch_size < 1:
            raise ScoringError(
                f"window and batch_size: positive integers, got {self.window} and {self.batch_size}"
            )
        cls = type(self.model)
        if self.context == "carry" and not getattr(cls, "carries_state", False):
            raise ScoringError(
                f"context: carry reads a long input in calls with the state carried, and "
                f"{cls.__name__} keeps no state between calls; use context=truncate"
            )
        self.targets = bool(getattr(cls, "uses_targets", False))
        self.model.eval()
        self.calls = 0  # forwards run, for the benchmark and the memory checks

    # -- reading -----------------------------------------------------------------------
    @torch.no_grad()
    def _read(self, x: torch.Tensor, y: torch.Tensor, need: torch.Tensor | None = None,
              state=None):  # fmt: skip
        """(log-probabilities of y, whether each is the argmax, the logits of each call) for
        inputs x (B, L) with targets y, in calls of W with the state carried. With `need`
        (a (B, L) mask), only those positions are scored (the others read 0 and True): the
        softmax over the vocabulary then costs the continuation's tokens, not the context's."""
        kept, lp, hit, lo, hi = [], None, None, 0, 0
        if need is not None:
            # Written in place, and only in the windows that hold scored positions (one host
            # read finds them): a haystack's other windows allocate nothing, where a pair of
            # small tensors per window grew memory with the haystack (about 200 bytes a token).
            lp = torch.zeros(y.shape, device=y.device)
            hit = torch.ones(y.shape, dtype=torch.bool, device=y.device)
            cols = need.any(0).nonzero()
            lo, hi = (int(cols[0]), int(cols[-1]) + 1) if len(cols) else (0, 0)
        for s in range(0, x.shape[1], self.window):
            xs, ys = x[:, s : s + self.window], y[:, s : s + self.window]
            kw = {"targets": ys} if self.targets else {}
            logits, state = self.model(xs, state, **kw)
            self.calls += 1
            if need is None:
                kept.append(logits.float())
                continue
            if s + self.window <= lo or s >= hi:
                continue
            m = need[:, s : s + self.window]
            sel, t = logits.float()[m], ys[m]
            # log_softmax picked at the targets, without writing a (N, V) tensor of it
            picked = sel.gather(-1, t.unsqueeze(-1)).squeeze(-1)
            lp[:, s : s + self.window][m] = picked - torch.logsumexp(sel, -1)
            hit[:, s : s + self.window][m] = sel.argmax(-1) == t
        self.last_state = state
        return lp, hit, kept

    def _rows(self, seqs: list[list[int]]):
        """Inputs and targets of `seqs`, right-padded into (B, L) tensors (one numpy fill:
        building a tensor per row costs as much as a small model's forward)."""
        lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        buf = np.full((len(seqs), int(lens.max())), IGNORE, dtype=np.int64)
        buf[np.arange(buf.shape[1])[None, :] < lens[:, None]] = np.fromiter(
            itertools.chain.from_iterable(seqs), dtype=np.int64, count=int(lens.sum())
        )
        x, y = buf[:, :-1].copy(), buf[:, 1:]
        x[x == IGNORE] = 0  # padding (and a placeholder) is read as id 0, never scored
        return torch.from_numpy(x).to(self.device), torch.from_numpy(y.copy()).to(self.device)

    def _clip(self, ctx: Sequence[int], cont: Sequence[int]) -> list[int]:
        if not ctx:
            raise ScoringError("a request with an empty context (give a prefix token)")
        if self.context == "carry":
            return [*ctx, *cont]
        if len(cont) > self.window:
            raise ScoringError(
                f"a continuation of {len(cont)} tokens is longer than the window "
                f"({self.window}); use context=carry or a larger max_length"
            )
        return [*ctx, *cont][-(self.window + 1) :]

    def loglikelihood(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]):
        """[(log p(cont | ctx), greedy)] for each (ctx, cont) pair, in the order given."""
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        out: list[tuple[float, bool] | None] = [None] * len(pairs)
        for b in range(0, len(order), self.batch_size):
            idx = order[b : b + self.batch_size]
            seqs = [self._clip(*pairs[i]) for i in idx]
            x, y = self._rows(seqs)
            # each row's continuation: the last n of its len(s) - 1 targets
            ends = torch.tensor([len(s) - 1 for s in seqs]).unsqueeze(1)
            n = torch.tensor([len(pairs[i][1]) for i in idx]).unsqueeze(1)
            at = torch.arange(x.shape[1]).unsqueeze(0)
            mask = ((at >= ends - n) & (at < ends)).to(x.device)
            lp, hit, _ = self._read(x, y, need=mask)
            scores = torch.where(mask, lp, 0.0).sum(1).tolist()
            greedy = (hit | ~mask).all(1).tolist()
            for row, i in enumerate(idx):
                out[i] = (float(scores[row]), bool(greedy[row]))
        return out

    # -- test-time memorization ---------------------------------------------------------
    def memorized(
        self,
        pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
        replays: Sequence[Sequence[int]],
        steps: int,
        reset: bool = True,
    ) -> list[tuple[float, bool]]:
        """[(log p(cont | ctx), greedy)] with `replays[i]` (the prompt, and the answer when
        asked) read `steps` times through the model first, its state carried into the scoring
        read: what the model learned in context from the replay is all that changes. With
        `reset`, every request starts from a fresh state; without, the state after one
        request's replays is where the next request's replays start (in the order given).
        One request at a time: a padded row would write its padding into its state."""
        if steps and not getattr(type(self.model), "memorizes", False):
            raise ScoringError(
                f"memorize: {type(self.model).__name__} declares no in-context memory "
                "(memorizes = True), so replaying a prompt changes nothing"
            )
        out, carried = [], None
        for (ctx, cont), replay in zip(pairs, replays):
            state = None if reset else carried
            for _ in range(steps):
                state = self._state_after(list(replay), state)
            carried = state
            seq = self._clip(ctx, cont)
            x, y = self._rows([seq])
            end, n = len(seq) - 1, len(cont)
            need = torch.zeros_like(y, dtype=torch.bool)
            need[0, end - n : end] = True
            lp, hit, _ = self._read(x, y, need=need, state=state)
            out.append((float(lp[0, end - n : end].sum()), bool(hit[0, end - n : end].all())))
        return out

    @torch.no_grad()
    def _state_after(self, ids: list[int], state):
        """The model's state after reading `ids` (in calls of W) from `state`."""
        if not ids:
            return state
        x, y = self._rows([[*ids, IGNORE]])  # every id read, the last one teaching nothing
        self._read(x, y, state=state)
        return self.last_state

    # -- extending ---------------------------------------------------------------------
    @torch.no_grad()
    def greedy(
        self,
        contexts: Sequence[Sequence[int]],
        max_tokens: int,
        done: Callable[[int, list[int]], bool],
    ) -> list[list[int]]:
        """Greedy continuations of each context, at most `max_tokens` ids, a row ending once
        `done(i, ids so far)` holds. Each step reads the row's whole (clipped) sequence again,
        so that a kind whose attention sees only its own call continues as it scores."""
        out = [[] for _ in contexts]
        order = sorted(range(len(contexts)), key=lambda i: -len(contexts[i]))
        for b in range(0, len(order), self.batch_size):
            live = list(order[b : b + self.batch_size])
            for _ in range(max_tokens):
                if not live:
                    break
                seqs = []
                for i in live:
                    toks = [*contexts[i], *out[i]]
                    if self.context == "truncate":
                        toks = toks[-self.window :]
                    seqs.append([*toks, IGNORE])  # a placeholder target: it teaches nothing
                x, y = self._rows(seqs)
                logits = torch.cat(self._read(x, y)[2], 1)
                for row, i in enumerate(live):
                    out[i].append(int(logits[row, len(seqs[row]) - 2].argmax()))
                live = [i for i in live if not done(i, out[i])]
        return out
