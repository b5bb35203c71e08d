"""Needle in a haystack: the passkey task generalised to long text read in calls, on a trial's
own tokenizer and held-out text.

Notation
    L           haystack length in tokens (`lengths`, default 1k, 4k, 16k and 64k)
    W           the call length: the trial's data.seq_len
    needle      "The pass key is K. Remember it. K is the pass key." with K a `digits`-digit
                number, inserted at a depth drawn uniformly in [0.1, 0.9] of the haystack
    question    "What is the pass key? The pass key is", after the haystack
    score       the key is chosen among `candidates` numbers (the true one and distractors of
                the same length) by the log-likelihood of " K" after haystack + question;
                accuracy = share of `samples` haystacks per length where the true key wins
                (chance: 1 / candidates)
    carry       the whole haystack is read in calls of W with the model's recurrent state
                carried from one call to the next: what the memory kept of the needle
    fresh       only the last W inputs are read (a fresh state): the needle is out of reach
                unless it sits in the last call, so this is the floor a memory must beat

The haystack is the trial's held-out split, from a seeded offset, repeated when shorter than
L. Memory is bounded by the call: a carry read holds one call's activations and the state,
whatever L is; the peak resident memory above the process's before each length is reported
(`rss_mb`), sampled every 5 ms by psutil while the length is scored.

Metrics, per mode: `eval/needle_<mode>/acc_len<L>` and `eval/needle_<mode>/rss_mb_len<L>`.
A kind that keeps no state between calls has no carry mode: it is skipped for that kind and
said in the run's `nlsweep.warning.eval_needles_carry` tag (a spec whose kinds all lack it is
refused).
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import psutil
import torch

from models.common import require
from nlsweep.evaluation.scorer import Scorer, ScoringError

NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = " What is the pass key? The pass key is"


@dataclass
class NeedleConfig:
    """`eval.needles` section."""

    lengths: list[int] = field(default_factory=lambda: [1024, 4096, 16384, 65536])
    samples: int = 4
    candidates: int = 4
    digits: int = 5
    modes: list[Literal["carry", "fresh"]] = field(default_factory=lambda: ["carry", "fresh"])
    seed: int = 0

    def __post_init__(self):
        require(bool(self.lengths) and all(n >= 64 for n in self.lengths), "lengths",
                "a non-empty list of haystack lengths of at least 64 tokens")  # fmt: skip
        require(self.samples >= 1, "samples", f"a positive integer, got {self.samples}")
        require(2 <= self.candidates <= 10 ** self.digits, "candidates",
                f"2 to 10^digits keys to choose from, got {self.candidates}")  # fmt: skip
        require(1 <= self.digits <= 9, "digits", f"1 to 9, got {self.digits}")
        require(bool(self.modes) and len(set(self.modes)) == len(self.modes), "modes",
                "carry and/or fresh, each once")  # fmt: skip

    def settings(self) -> dict:
        return asdict(self)


class PeakRSS:
    """Peak resident memory of this process above its level at the start, in MB."""

    def __init__(self, every_s: float = 0.005):
        self.proc, self.every = psutil.Process(), every_s

    def __enter__(self):
        self.base = self.peak = self.proc.memory_info().rss
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while not self.stop.wait(self.every):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self.mb = (self.peak - self.base) / 2**20


def haystack(heldout, length: int, rng: np.random.Generator) -> list[int]:
    """`length` held-out ids from a random offset, the split repeated as needed."""
    ids = np.asarray(heldout, dtype=np.int64)
    start = int(rng.integers(0, len(ids)))
    reps = -(-(start + length) // len(ids))
    return np.tile(ids, reps)[start : start + length].tolist()


def needle_requests(tokenizer, heldout, cfg: NeedleConfig, length: int, sample: int):
    """(context ids, [continuation ids per candidate], index of the true key) of one haystack."""
    rng = np.random.default_rng([cfg.seed, length, sample])
    low, high = 10 ** (cfg.digits - 1), 10**cfg.digits
    keys = []
    while len(keys) < cfg.candidates:
        k = int(rng.integers(low, high))
        if k not in keys:
            keys.append(k)
    true = int(rng.integers(0, cfg.candidates))
    needle = tokenizer.encode(NEEDLE.format(key=keys[true])).tolist()
    question = tokenizer.encode(QUESTION).tolist()
    fill = length - len(needle) - len(question)
    if fill < 1:
        raise ScoringError(f"needles: a haystack of {length} tokens cannot hold the needle and "
                           f"the question ({len(needle) + len(question)} tokens)")  # fmt: skip
    hay = haystack(heldout, fill, rng)
    at = int(fill * rng.uniform(0.1, 0.9))
    context = hay[:at] + needle + hay[at:] + question
    return context, [tokenizer.encode(f" {k}").tolist() for k in keys], true


def run_needles(trial, cfg: NeedleConfig, device=None) -> tuple[dict[str, float], dict[str, str]]:
    """(accuracy and peak memory per mode and length, {mode: why skipped}): see the module's
    docstring; a kind without state skips the carry mode, and says so."""
    if trial.heldout is None or len(trial.heldout) == 0:
        raise ScoringError(f"needles: {trial.name} has no held-out text for a haystack")
    device = torch.device(device or "cpu")
    window = trial.cfg.data.seq_len
    out: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for mode in cfg.modes:
        if mode == "carry" and not getattr(type(trial.model), "carries_state", False):
            skipped[mode] = (f"skipped: model kind {trial.kind} keeps no state between calls, "
                             "so it has no carry mode")  # fmt: skip
            continue
        scorer = Scorer(trial.model, window, "carry" if mode == "carry" else "truncate",
                        batch_size=cfg.candidates, device=device)  # fmt: skip
        for length in cfg.lengths:
            right = 0
            with PeakRSS() as mem:
                for sample in range(cfg.samples):
                    ctx, conts, true = needle_requests(trial.tokenizer, trial.heldout, cfg,
                                                       length, sample)  # fmt: skip
                    scores = [s for s, _ in scorer.loglikelihood([(ctx, c) for c in conts])]
                    right += int(np.argmax(scores)) == true
            out[f"eval/needle_{mode}/acc_len{length}"] = right / cfg.samples
            out[f"eval/needle_{mode}/rss_mb_len{length}"] = mem.mb
    return out, skipped
