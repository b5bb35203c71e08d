"""Contiguous-stream batching over a tokenized text corpus, and the corpus itself.

Batches are B contiguous streams: the training tokens are cut into B rows and batch k is
columns [kT, (k+1)T) of every row, so row b continues where it stopped (persistent recurrent
state depends on this). The vocabulary (characters, or a SentencePiece model,
`tokenizer.py`) comes from the training split alone; id 0 is <unk>. A split of documents is
their tokens in order, each followed by the end-of-document id.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from models.errors import ConfigError
from models.teach import IGNORE
from nlsweep.data.config import DataConfig
from nlsweep.data.corpora import DataError, cache_root
from nlsweep.data.order import DocumentOrder
from nlsweep.data.tokenizer import (
    CharTokenizer,
    SentencePieceTokenizer,
    TokenizerError,
    cached_sentencepiece,
    load_sentencepiece,
)


class StreamBatcher:
    """B contiguous streams over a token sequence, with an explicit, checkpointable cursor."""

    def __init__(
        self,
        tokens: torch.Tensor,
        batch_size: int,
        seq_len: int,
        where: str = "train",
        order: DocumentOrder | None = None,
    ):
        row_len = (len(tokens) - 1) // batch_size
        if row_len < seq_len:
            raise ConfigError(
                "data.seq_len",
                f"at most {row_len} so that the {where} split ({len(tokens)} tokens) fills "
                f"{batch_size} streams, got {seq_len}",
            )
        n = batch_size * row_len
        self.tokens = tokens
        self.x = tokens[:n].view(batch_size, row_len)
        self.y = tokens[1 : n + 1].view(batch_size, row_len)
        self.seq_len = seq_len
        self.row_len = row_len
        self.order = order  # data.shuffle: each epoch reads the documents in its own order
        self.cursor = 0
        self.epoch = 0

    @property
    def windows_per_epoch(self) -> int:
        return self.x.shape[1] // self.seq_len

    def next(self) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(x, y, starts_epoch): starts_epoch marks a batch at the start of every stream."""
        if self.cursor + self.seq_len > self.x.shape[1]:
            self.cursor = 0
            self.epoch += 1
        start = self.cursor
        self.cursor += self.seq_len
        if self.order is not None:
            x, y = self._shuffled(start)
            return x, y, start == 0
        sl = slice(start, start + self.seq_len)
        # int64 per batch: the tokens may be a uint16/uint32 memory map (`prepared.py`)
        return self.x[:, sl].long(), self.y[:, sl].long(), start == 0

    def _shuffled(self, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Columns [start, start + T) of this epoch's shuffled stream (`order.py`) in the
        same B-row layout: x its positions, y the positions one further."""
        rows = np.arange(self.x.shape[0], dtype=np.int64)[:, None] * self.row_len
        v = rows + np.arange(start, start + self.seq_len + 1, dtype=np.int64)
        src = torch.from_numpy(self.order.source(self.epoch, v.reshape(-1)))
        ids = self.tokens[src].long().view(v.shape)
        return ids[:, :-1], ids[:, 1:]

    def window(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        sl = slice(k * self.seq_len, (k + 1) * self.seq_len)
        return self.x[:, sl].long(), self.y[:, sl].long()

    def full_columns(self) -> int:
        """Length of each of the B rows `full_windows` lays the split out in."""
        return -(-(len(self.tokens) - 1) // self.x.shape[0])

    def full_windows(self, window: int | None = None, columns: int | None = None):
        """The whole split, every target predicted exactly once: B contiguous rows of
        ceil((n - 1) / B) tokens (the last row's tail padded with ignored targets), in
        windows of `window` (default seq_len) tokens, the last one possibly shorter. Each
        window is cut from the tokens as it is needed: no copy of the split. `columns`: only
        the first that many tokens of each row (a budget spread over the split)."""
        n = len(self.tokens) - 1
        B = self.x.shape[0]
        row = -(-n // B)
        end = row if columns is None else min(row, columns)
        w = window or self.seq_len
        for c in range(0, end, w):
            width = min(w, end - c)
            x = torch.zeros(B, width, dtype=torch.long)
            y = torch.full((B, width), IGNORE, dtype=torch.long)
            for b in range(B):
                a = b * row + c
                m = max(0, min(width, n - a))
                x[b, :m] = self.tokens[a : a + m]
                y[b, :m] = self.tokens[a + 1 : a + 1 + m]
            yield x, y

    def state_dict(self) -> dict:
        return {"cursor": self.cursor, "epoch": self.epoch}

    def load_state_dict(self, sd: dict) -> None:
        self.cursor, self.epoch = int(sd["cursor"]), int(sd["epoch"])


@dataclass
class Corpus:
    vocab: CharTokenizer | SentencePieceTokenizer
    train: torch.Tensor
    val: torch.Tensor
    val_overlap: float
    val_unk_rate: float
    val_units: dict[str, torch.Tensor] = field(default_factory=dict)
    """Per held-out token, the bytes and characters of text it stands for (val/bpb, val/bpc)."""
    accuracy_key: str | None = None
    """Text corpora report no accuracy; tasks name theirs (e.g. val/recall_acc)."""
    generated = False
    """A text corpus has a finite held-out split that a final evaluation can score whole."""
    prepared: str = ""
    """The cache folder its arrays are mapped from (`prepared.py`)."""

    def extra_evals(self, batch_size: int) -> dict:
        return {}  # tasks add held-out sets at other lengths

    def batchers(self, batch_size: int, seq_len: int, shuffle_seed: int | None = None):
        """(training, held-out) batchers of B contiguous streams; with `shuffle_seed`, the
        training documents in a fresh seeded order each epoch (`order.py`)."""
        order = None
        if shuffle_seed is not None:
            order = DocumentOrder(self.train, require_documents(self.vocab, "data.shuffle"),
                                  shuffle_seed)  # fmt: skip
            if len(order) < 2:
                raise ConfigError("data.shuffle", "unset: the training split is one document, "
                                  "which no order changes")  # fmt: skip
        return (
            StreamBatcher(self.train, batch_size, seq_len, "training", order),
            StreamBatcher(self.val, batch_size, seq_len, "held-out"),
        )

    def unit_batchers(self, batch_size: int, seq_len: int) -> dict[str, StreamBatcher]:
        """Batchers over `val_units` laid out as the held-out batcher: a window's targets
        line up with the bytes (characters) they stand for."""
        return {k: StreamBatcher(v, batch_size, seq_len, "held-out")
                for k, v in self.val_units.items()}  # fmt: skip


def require_documents(vocab, key: str, corpus: str = "") -> int:
    """The end-of-document id of a corpus's tokenizer; ConfigError on `key` without one."""
    eod = getattr(vocab, "eod", None)
    if eod is None:
        which = f"corpus {corpus}" if corpus else "the corpus"
        raise ConfigError(key, f"unset: {which} has no documents (no end-of-document id); "
                          "give it .jsonl/.parquet rows, files, or data.separator")  # fmt: skip
    return eod


def has_documents(*splits) -> bool:
    """Whether any split is a list of documents (its tokenizer then reserves an end id)."""
    return any(not isinstance(s, str) for s in splits)


def build_tokenizer(cfg: DataConfig, train, eod: bool | None = None):
    """The tokenizer of `cfg`, from the training split alone (reserving an end-of-document
    id when `eod`, by default when the split is documents); DataError (one line) if it
    cannot be trained or loaded."""
    eod = has_documents(train) if eod is None else eod
    try:
        if cfg.tokenizer == "char":
            return CharTokenizer(train, eod=eod)
        if cfg.tokenizer_path:
            tok = load_sentencepiece(cfg.tokenizer_path)
            if eod and tok.eod is None:
                raise TokenizerError(
                    f"data.tokenizer_path: {cfg.tokenizer_path} has no eos piece to end the "
                    "corpus's documents with; train it with eos_id set"
                )
            return tok
        return cached_sentencepiece(train, cfg.vocab_size, cfg.model_type, cache_root(), eod)
    except TokenizerError as e:
        raise DataError(str(e)) from None


def tokenize(cfg: DataConfig, train, val, tok=None):
    """(tokenizer, training ids, held-out ids, held-out units) of two splits (each a string
    or its documents); the tokenizer is `tok`, or else built from the training split."""
    if not (train if isinstance(train, str) else any(train)) or not (
        val if isinstance(val, str) else any(val)
    ):
        raise DataError(f"corpus {cfg.corpus}: empty training or held-out split")
    tok = tok or build_tokenizer(cfg, train, has_documents(train, val))
    try:
        val_ids, units = tok.encode_split_with_units(val)
        return tok, tok.encode_split(train), val_ids, units
    except TokenizerError as e:
        raise DataError(str(e)) from None
