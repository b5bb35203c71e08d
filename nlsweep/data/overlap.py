"""The leakage alarm at any corpus size: the fraction of held-out k-character shingles that
also occur in the training text, estimated from a seeded sample of held-out positions checked
against one streaming pass over the training text.

    k          shingle length, 32 characters (code points)
    s_i        the held-out shingle starting at held-out position i
    overlap    = #{i : s_i occurs somewhere in training} / #{i}          (exact definition)
    sample     each held-out position joins with probability r = min(1, m / n_hint), from a
               generator seeded with `seed` (n_hint: an upper bound on held-out shingles,
               e.g. the held-out bytes); r = 1 below m positions, where the estimate is exact.
               Without a hint (a stream), r starts at 1 and halves whenever the sample
               passes 2m, thinning it by the same draws: exact below 2m positions
    estimate   the fraction of sampled positions whose shingle occurs in training
    bound      the estimate is a binomial proportion over n_s sampled positions, so it is
               within 3 sqrt(p (1 - p) / n_s) <= 1.5 / sqrt(n_s) of the exact value with
               probability >= 0.997 (normal approximation); `OverlapEstimate.bound` is that

Shingles are compared by a 64-bit polynomial hash of their code points, computed for a whole
chunk at once from prefix sums (h_i = (P_{i+k} - P_i) w^-i mod 2^64, w odd so invertible);
the chance that any two different shingles collide is negligible at these sizes. Training
shingles are tested for membership in the sample only: a byte table indexed by a hash's top
bits passes a small fraction of them to an exact sorted search, so memory is O(m) whatever
the training size and time is a few vector operations per character.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

SHINGLE = 32
ID_SHINGLE = 8
"""k for pre-tokenized corpora, in ids (about 32 characters of subword tokens)."""
SAMPLE = 200_000
"""m: held-out positions sampled (the bound at m is 1.5 / sqrt(m) = 0.0034)."""
_W = np.uint64(0x9E3779B97F4A7C15)  # odd: invertible mod 2^64
_W_INV = np.uint64(pow(int(_W), -1, 2**64))
_TABLE_BITS = 24


def _codes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)


class ShingleHasher:
    """The hashes of every k-shingle of a text given in pieces, in order; shingles that
    straddle two pieces are hashed like any other (the last k - 1 characters carry over)."""

    def __init__(self, k: int = SHINGLE):
        self.k = k
        self.tail = np.zeros(0, dtype=np.uint64)
        self._pw = self._ipw = np.ones(1, dtype=np.uint64)

    def _powers(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self._pw) < n:
            m = n + n // 4  # headroom: blocks of about one size reuse the table
            with np.errstate(over="ignore"):
                self._pw = np.cumprod(np.full(m, _W, dtype=np.uint64)) * _W_INV
                self._ipw = np.cumprod(np.full(m, _W_INV, dtype=np.uint64)) * _W
        return self._pw[:n], self._ipw[:n]

    def update(self, text: str | np.ndarray) -> np.ndarray:
        """The hashes of the shingles that end in `text` (characters, or token ids)."""
        piece = _codes(text) if isinstance(text, str) else np.asarray(text).astype(np.uint64)
        codes = np.concatenate([self.tail, piece])
        k = self.k
        self.tail = codes[-(k - 1) :] if k > 1 else codes[:0]
        if len(codes) < k:
            self.tail = codes
            return np.zeros(0, dtype=np.uint64)
        pw, ipw = self._powers(len(codes))
        with np.errstate(over="ignore"):
            sums = np.cumsum(codes * pw, dtype=np.uint64)
            prefix = np.concatenate([np.zeros(1, np.uint64), sums])
            return (prefix[k:] - prefix[:-k]) * ipw[: len(codes) - k + 1]


@dataclass(frozen=True)
class OverlapEstimate:
    value: float
    sampled: int
    """Held-out positions the estimate is over (all of them when `exact`)."""
    exact: bool

    @property
    def bound(self) -> float:
        """Half-width of its 99.7% interval (0 when every position was checked)."""
        if self.exact or not self.sampled:
            return 0.0
        p = self.value
        return 3 * math.sqrt(max(p * (1 - p), 1.0 / self.sampled) / self.sampled)


class OverlapSketch:
    """Held-out shingles are added first (`add_heldout`, sampled), then the training text is
    streamed through `add_training`; `estimate()` reads the result."""

    def __init__(self, heldout_hint: int | None, sample: int = SAMPLE, seed: int = 0,
                 k: int = SHINGLE):  # fmt: skip
        # No hint (a stream of unknown length): every position at first, then, whenever
        # the sample passes 2m, the rate halves and the sampled positions are thinned by
        # the same uniform draws, so the sample stays uniform at the final rate.
        self.adaptive = heldout_hint is None
        self.limit = 2 * sample
        hint = 0 if heldout_hint is None else heldout_hint
        self.rate = 1.0 if hint <= sample else sample / hint
        self.rng = np.random.default_rng(seed)
        self._draws: list[np.ndarray] = []
        self.k = k
        self._held = ShingleHasher(k)
        self._train = ShingleHasher(k)
        self._parts: list[np.ndarray] = []
        self._seen: np.ndarray | None = None
        self.positions = 0

    def add_heldout(self, text: str) -> None:
        h = self._held.update(text)
        self.positions += len(h)
        if self.adaptive:
            u = self.rng.random(len(h))
            keep = u < self.rate
            self._parts.append(h[keep])
            self._draws.append(u[keep])
            self._n = getattr(self, "_n", 0) + int(keep.sum())
            while self._n > self.limit:
                self.rate /= 2
                self._parts = [p[d < self.rate] for p, d in zip(self._parts, self._draws)]
                self._draws = [d[d < self.rate] for d in self._draws]
                self._n = sum(len(p) for p in self._parts)
            return
        if self.rate < 1.0:
            h = h[self.rng.random(len(h)) < self.rate]
        self._parts.append(h)

    def _freeze(self) -> None:
        sample = np.concatenate(self._parts) if self._parts else np.zeros(0, np.uint64)
        self._sample = sample
        self._keys, self._inverse = np.unique(sample, return_inverse=True)
        self._seen = np.zeros(len(self._keys), dtype=bool)
        self._table = np.zeros(1 << _TABLE_BITS, dtype=bool)
        self._table[(self._keys >> np.uint64(64 - _TABLE_BITS)).astype(np.int64)] = True

    def add_training(self, text: str) -> None:
        self.mark(hits(self.frozen(), self._train.update(text)))

    def frozen(self) -> tuple[np.ndarray, np.ndarray]:
        """(the sorted sampled hashes, their byte table): what `hits` tests training
        shingles against, e.g. in other processes."""
        if self._seen is None:
            self._freeze()
        return self._keys, self._table

    def mark(self, hit: np.ndarray) -> None:
        """Sampled hashes (indices into `frozen()[0]`) found in training text."""
        if self._seen is None:
            self._freeze()
        self._seen[hit] = True

    def estimate(self) -> OverlapEstimate:
        if self._seen is None:
            self._freeze()
        n = len(self._sample)
        value = float(self._seen[self._inverse].mean()) if n else 0.0
        return OverlapEstimate(value, n, exact=self.rate >= 1.0)


def hits(frozen: tuple[np.ndarray, np.ndarray], h: np.ndarray) -> np.ndarray:
    """The indices of the sampled hashes that occur among the training shingle hashes `h`."""
    keys, table = frozen
    if not len(keys) or not len(h):
        return np.zeros(0, dtype=np.int64)
    h = h[table[(h >> np.uint64(64 - _TABLE_BITS)).astype(np.int64)]]
    idx = np.searchsorted(keys, h)
    inside = idx < len(keys)
    idx, h = idx[inside], h[inside]
    return np.unique(idx[keys[idx] == h])


def shingle_overlap(train: str | Iterable[str], val: str | Iterable[str], k: int = SHINGLE,
                    sample: int = SAMPLE, seed: int = 0) -> OverlapEstimate:  # fmt: skip
    """The overlap of held-out text `val` with training text `train` (each a string or its
    pieces in order): exact below `sample` held-out positions, else estimated."""
    vals = [val] if isinstance(val, str) else list(val)
    hint = sum(len(v) for v in vals)
    sketch = OverlapSketch(hint, sample, seed, k)
    for piece in vals:
        sketch.add_heldout(piece)
    for piece in [train] if isinstance(train, str) else train:
        sketch.add_training(piece)
    return sketch.estimate()
