"""Synthetic memory tasks (shared notes §3): sequences generated on the fly, no download.

`mqar`, multi-query associative recall. Token 0 is filler; keys come from the lower half of
the remaining vocabulary, values from the upper half. A sequence holds D key-value pairs
`k_1 v_1 ... k_D v_D`, filler, then the D keys again in a random order, each followed by its
value; the loss and the accuracy (`val/recall_acc`) count only the positions whose target is a
queried value. Every query sits at least seq_len - 4D positions after its pair, so a model
whose attention window is shorter must recall through something else (its memory).

Training batch i is generated from (task_seed, i), so the data cursor is one integer and a
resumed trial sees exactly the batches it would have seen. Held-out sequences come from a
separate seed; training and held-out sequences are disjoint by construction (a sequence
belongs to the split given by the parity of a fixed hash of its pairs), so `data/val_overlap`
is 0 because it cannot be otherwise, and is reported as such.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.teach import IGNORE

HELDOUT_SEED = 1 << 40
TASKS = ("mqar",)


class TokenVocab:
    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size


def mqar_batch(
    gen: torch.Generator, n: int, seq_len: int, vocab: int, pairs: int, split: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """n MQAR sequences of the given split (0 train, 1 held-out): inputs and targets."""
    half = (vocab - 1) // 2
    weights = torch.randint(1, 2**31, (2 * pairs,), generator=torch.Generator().manual_seed(7))
    x = torch.zeros(n, seq_len, dtype=torch.long)
    keys = torch.empty(n, pairs, dtype=torch.long)
    vals = torch.empty(n, pairs, dtype=torch.long)
    todo = torch.arange(n)
    while len(todo):  # draw until every row belongs to the requested split
        m = len(todo)
        k = torch.rand(m, half, generator=gen).argsort(dim=1)[:, :pairs] + 1
        v = torch.randint(1 + half, vocab, (m, pairs), generator=gen)
        parity = (torch.cat([k, v], 1) * weights).sum(1) % 2
        ok = parity == split
        keys[todo[ok]], vals[todo[ok]] = k[ok], v[ok]
        todo = todo[~ok]
    x[:, 0 : 2 * pairs : 2], x[:, 1 : 2 * pairs : 2] = keys, vals
    order = torch.rand(n, pairs, generator=gen).argsort(dim=1)
    q0 = seq_len - 2 * pairs
    x[:, q0::2] = keys.gather(1, order)
    x[:, q0 + 1 :: 2] = vals.gather(1, order)
    y = torch.full_like(x, IGNORE)
    y[:, q0::2] = x[:, q0 + 1 :: 2]  # predict each queried value from its key
    return x, y


class TaskBatcher:
    """Batches of generated sequences with the StreamBatcher interface."""

    def __init__(self, make, batch_size: int, seed: int, split: int, windows: int = 1 << 30):
        self.make, self.batch_size, self.seed, self.split = make, batch_size, seed, split
        self.windows_per_epoch = windows
        self.cursor = 0

    def _batch(self, i: int):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        return self.make(gen, self.batch_size, self.split)

    def next(self):
        x, y = self._batch(self.cursor)
        self.cursor += 1
        return x, y, True  # independent sequences: every batch starts fresh streams

    def window(self, k: int):
        return self._batch(k)

    def state_dict(self) -> dict:
        return {"cursor": self.cursor}

    def load_state_dict(self, sd: dict) -> None:
        self.cursor = int(sd["cursor"])


@dataclass
class TaskCorpus:
    """A synthetic task in the place of a text corpus (see `nlsweep.data.Corpus`)."""

    name: str
    vocab: TokenVocab
    seq_len: int
    pairs: int
    seed: int
    val_overlap: float = 0.0
    val_unk_rate: float = 0.0
    accuracy_key: str = "val/recall_acc"

    def batchers(self, batch_size: int, seq_len: int):
        def make(gen, n, split):
            return mqar_batch(gen, n, seq_len, len(self.vocab), self.pairs, split)

        return (
            TaskBatcher(make, batch_size, self.seed, 0),
            TaskBatcher(make, batch_size, self.seed + HELDOUT_SEED, 1),
        )


def load_task(cfg) -> TaskCorpus:
    """The task a `data:` section names (its fields were checked by DataConfig)."""
    return TaskCorpus(cfg.corpus, TokenVocab(cfg.vocab_size), cfg.seq_len, cfg.num_kv_pairs,
                      cfg.task_seed)  # fmt: skip
