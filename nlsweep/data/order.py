"""`data.shuffle`: the training split's documents read in a fresh seeded order each epoch,
without a copy of the split.

    documents   the pieces of the training tokens that end with the end-of-document id
                (a last piece without one, if any, is a document too); n of them
    order       epoch e reads them in the order pi_e = numpy.random.default_rng(
                [shuffle_seed, e]).permutation(n): a function of the seed and the epoch only,
                so a resumed trial (whose cursor holds the epoch) reads the same batches
    stream      V_e = the documents concatenated in the order pi_e: as many tokens as the
                split, laid out in B rows exactly as the split itself is (`StreamBatcher`)
    lookup      position v of V_e is token s(v) of the split: with c_k the cumulative length
                of the first k documents of pi_e, k = the first index with c_k > v and
                s(v) = start(pi_e[k]) + v - c_{k-1}; a batch gathers its B x (T + 1)
                positions by one binary search each

Finding the documents takes one pass over the split in blocks (bounded memory whatever the
split's size); each epoch then costs O(n) for its order.
"""

from __future__ import annotations

import numpy as np
import torch

BLOCK = 1 << 24  # tokens compared with the end id at a time


class DocumentOrder:
    """Maps positions of an epoch's shuffled stream to positions of the split."""

    def __init__(self, tokens: torch.Tensor, eod: int, seed: int):
        ids = tokens.numpy()
        ends = [np.flatnonzero(ids[a : a + BLOCK] == eod) + (a + 1)
                for a in range(0, len(ids), BLOCK)]  # fmt: skip
        end = np.concatenate(ends) if ends else np.zeros(0, dtype=np.int64)
        if not len(end) or end[-1] != len(ids):
            end = np.append(end, len(ids))
        self.starts = np.concatenate([[0], end[:-1]]).astype(np.int64)
        self.lengths = (end - self.starts).astype(np.int64)
        self.seed = seed
        self._epoch: int | None = None

    def __len__(self) -> int:
        return len(self.starts)

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self))

    def _table(self, epoch: int) -> None:
        if self._epoch != epoch:
            perm = self.permutation(epoch)
            self._cum = np.cumsum(self.lengths[perm])
            self._first = self.starts[perm]
            self._len = self.lengths[perm]
            self._epoch = epoch

    def source(self, epoch: int, positions: np.ndarray) -> np.ndarray:
        """s(v) for every position v of epoch `epoch`'s stream."""
        self._table(epoch)
        k = np.searchsorted(self._cum, positions, side="right")
        return self._first[k] + positions - (self._cum[k] - self._len[k])
