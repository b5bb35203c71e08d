"""Synthetic memory tasks (shared notes §3): sequences generated on the fly, no download.

`mqar`, multi-query associative recall. Token 0 is filler; keys come from the lower half of
the remaining vocabulary, values from the upper half. A sequence holds D key-value pairs
`k_1 v_1 ... k_D v_D`, filler, then the D keys again in a random order, each followed by its
value; the loss and the accuracy (`val/recall_acc`) count only the positions whose target is a
queried value. Every query sits at least seq_len - 4D positions after its pair, so a model
whose attention window is shorter must recall through something else (its memory).

`passkey`: a key of `key_len` digits after a KEY marker, hidden at a random depth in random
filler, and asked for at the end after a QUERY marker; the loss and the accuracy
(`val/passkey_acc`, per digit) count only the key's digits after the query. Held-out accuracy
is also reported at every length of `eval_lengths` (`val/passkey_acc/lenL`), the key at a
random depth each time: recall by context length.

Training batch i is generated from (task_seed, i), so the data cursor is one integer and a
resumed trial sees exactly the batches it would have seen. Held-out sequences come from a
separate seed; training and held-out sequences are disjoint by construction (a sequence
belongs to the split given by the parity of a fixed hash of its pairs), so `data/val_overlap`
is 0 because it cannot be otherwise, and is reported as such.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.errors import require
from models.teach import IGNORE

HELDOUT_SEED = 1 << 40
ACCURACY = {"mqar": "val/recall_acc", "passkey": "val/passkey_acc"}
KEY, QUERY, FILLER0 = 1, 2, 3  # passkey markers; filler tokens from 3, the 10 digits last


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


def passkey_batch(
    gen: torch.Generator, n: int, seq_len: int, vocab: int, key_len: int, split: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """n passkey sequences of the given split: inputs and targets (the digits after QUERY)."""
    digits0 = vocab - 10
    weights = torch.randint(1, 2**31, (key_len + 1,), generator=torch.Generator().manual_seed(7))
    x = torch.randint(FILLER0, digits0, (n, seq_len), generator=gen)
    keys = torch.empty(n, key_len, dtype=torch.long)
    depth = torch.empty(n, dtype=torch.long)
    todo = torch.arange(n)
    last = seq_len - 2 * key_len - 2  # the key and its marker end before the query
    while len(todo):
        m = len(todo)
        k = torch.randint(digits0, vocab, (m, key_len), generator=gen)
        d = torch.randint(0, last + 1, (m,), generator=gen)
        ok = (torch.cat([k, d[:, None]], 1) * weights).sum(1) % 2 == split
        keys[todo[ok]], depth[todo[ok]] = k[ok], d[ok]
        todo = todo[~ok]
    rows = torch.arange(n)[:, None]
    x[rows, depth[:, None]] = KEY
    x[rows, depth[:, None] + 1 + torch.arange(key_len)] = keys
    q = seq_len - key_len - 1
    x[:, q] = QUERY
    x[:, q + 1 :] = keys
    y = torch.full_like(x, IGNORE)
    y[:, q : q + key_len] = keys  # digit j predicted at QUERY + j
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

    generated = True
    """No end to the held-out split: its fixed `eval_batches` batches are the whole of it."""

    name: str
    vocab: TokenVocab
    size: int
    """mqar: key-value pairs; passkey: digits of the key."""
    seed: int
    eval_lengths: tuple[int, ...] = ()
    """passkey: extra held-out lengths, each reported as `<accuracy_key>/len<L>`."""
    val_overlap: float = 0.0
    val_unk_rate: float = 0.0

    @property
    def accuracy_key(self) -> str:
        return ACCURACY[self.name]

    def _make(self, seq_len: int):
        fn = mqar_batch if self.name == "mqar" else passkey_batch

        def make(gen, n, split):
            return fn(gen, n, seq_len, len(self.vocab), self.size, split)

        return make

    def batchers(self, batch_size: int, seq_len: int):
        return (
            TaskBatcher(self._make(seq_len), batch_size, self.seed, 0),
            TaskBatcher(self._make(seq_len), batch_size, self.seed + HELDOUT_SEED, 1),
        )

    def extra_evals(self, batch_size: int) -> dict:
        """Held-out batchers at the other lengths, by metric name."""
        return {
            f"{self.accuracy_key}/len{n}": TaskBatcher(
                self._make(n), batch_size, self.seed + HELDOUT_SEED + n, 1
            )
            for n in self.eval_lengths
        }


def load_task(cfg) -> TaskCorpus:
    """The task a `data:` section names (its fields were checked by DataConfig)."""
    size = cfg.num_kv_pairs if cfg.corpus == "mqar" else cfg.key_len
    return TaskCorpus(cfg.corpus, TokenVocab(cfg.vocab_size), size, cfg.task_seed,
                      tuple(cfg.eval_lengths or ()))  # fmt: skip


# -- their `data:` fields and metrics (registered in kinds.py) ------------------------------
def _check_seed(cfg) -> None:
    require(cfg.task_seed >= 0, "task_seed", f">= 0, got {cfg.task_seed}")


def check_mqar(cfg) -> None:
    """Defaults and bounds of mqar's fields: enough distinct keys, and room for every query."""
    cfg.vocab_size = 64 if cfg.vocab_size is None else cfg.vocab_size
    cfg.num_kv_pairs = 8 if cfg.num_kv_pairs is None else cfg.num_kv_pairs
    require(cfg.num_kv_pairs >= 1, "num_kv_pairs", f">= 1, got {cfg.num_kv_pairs}")
    require(
        (cfg.vocab_size - 1) // 2 >= cfg.num_kv_pairs,
        "vocab_size",
        f"at least {2 * cfg.num_kv_pairs + 1} for {cfg.num_kv_pairs} distinct keys, "
        f"got {cfg.vocab_size}",
    )
    require(
        cfg.seq_len >= 4 * cfg.num_kv_pairs,
        "seq_len",
        f"at least 4 x num_kv_pairs = {4 * cfg.num_kv_pairs}, got {cfg.seq_len}",
    )
    _check_seed(cfg)


def check_passkey(cfg) -> None:
    """Defaults and bounds of passkey's fields: every length holds the key, its markers and
    the query."""
    cfg.vocab_size = 32 if cfg.vocab_size is None else cfg.vocab_size
    cfg.key_len = 4 if cfg.key_len is None else cfg.key_len
    require(cfg.key_len >= 1, "key_len", f">= 1, got {cfg.key_len}")
    require(cfg.vocab_size >= 14, "vocab_size", f">= 14 for passkey, got {cfg.vocab_size}")
    if cfg.eval_segment is not None:
        require(cfg.eval_lengths, "eval_segment", "set with eval_lengths")
        require(cfg.eval_segment >= 1, "eval_segment", f">= 1, got {cfg.eval_segment}")
    shortest = 2 * cfg.key_len + 3
    for n in [cfg.seq_len, *(cfg.eval_lengths or [])]:
        require(
            n >= shortest,
            "seq_len" if n == cfg.seq_len else "eval_lengths",
            f"at least 2 x key_len + 3 = {shortest} tokens, got {n}",
        )
    _check_seed(cfg)


def passkey_metrics(cfg) -> dict[str, str]:
    """Per-digit accuracy at seq_len and at each of eval_lengths."""
    names = ["val/passkey_acc", *(f"val/passkey_acc/len{n}" for n in cfg.eval_lengths or ())]
    return dict.fromkeys(names, "max")
