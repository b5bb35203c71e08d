"""Contiguous-stream batching over a tokenized text corpus, and the corpus itself.

Batches are B contiguous streams: the training tokens are cut into B rows and batch k is
columns [kT, (k+1)T) of every row, so row b continues where it stopped (persistent recurrent
state depends on this). The vocabulary (characters, or a SentencePiece model,
`tokenizer.py`) comes from the training split alone; id 0 is <unk>.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from models.errors import ConfigError
from models.teach import IGNORE
from nlsweep.data.config import DataConfig
from nlsweep.data.corpora import DataError, cache_root, cached_overlap
from nlsweep.data.tokenizer import (
    CharTokenizer,
    SentencePieceTokenizer,
    TokenizerError,
    cached_sentencepiece,
    load_sentencepiece,
)


class StreamBatcher:
    """B contiguous streams over a token sequence, with an explicit, checkpointable cursor."""

    def __init__(self, tokens: torch.Tensor, batch_size: int, seq_len: int, where: str = "train"):
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
        sl = slice(start, start + self.seq_len)
        return self.x[:, sl], self.y[:, sl], start == 0

    def window(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        sl = slice(k * self.seq_len, (k + 1) * self.seq_len)
        return self.x[:, sl], self.y[:, sl]

    def full_windows(self, window: int | None = None):
        """The whole split, every target predicted exactly once: B contiguous rows of
        ceil((n - 1) / B) tokens (the last row's tail padded with ignored targets), in
        windows of `window` (default seq_len) tokens, the last one possibly shorter."""
        n = len(self.tokens) - 1
        B = self.x.shape[0]
        row = -(-n // B)
        x = torch.zeros(B * row, dtype=self.tokens.dtype)
        y = torch.full((B * row,), IGNORE, dtype=self.tokens.dtype)
        x[:n], y[:n] = self.tokens[:-1], self.tokens[1:]
        x, y = x.view(B, row), y.view(B, row)
        w = window or self.seq_len
        for c in range(0, row, w):
            yield x[:, c : c + w], y[:, c : c + w]

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

    def extra_evals(self, batch_size: int) -> dict:
        return {}  # tasks add held-out sets at other lengths

    def batchers(self, batch_size: int, seq_len: int):
        """(training, held-out) batchers of B contiguous streams."""
        return (
            StreamBatcher(self.train, batch_size, seq_len, "training"),
            StreamBatcher(self.val, batch_size, seq_len, "held-out"),
        )

    def unit_batchers(self, batch_size: int, seq_len: int) -> dict[str, StreamBatcher]:
        """Batchers over `val_units` laid out as the held-out batcher: a window's targets
        line up with the bytes (characters) they stand for."""
        return {k: StreamBatcher(v, batch_size, seq_len, "held-out")
                for k, v in self.val_units.items()}  # fmt: skip


def build_tokenizer(cfg: DataConfig, train_text: str):
    """The tokenizer of `cfg`, from the training split alone; DataError (one line) if it
    cannot be trained or loaded."""
    try:
        if cfg.tokenizer == "char":
            return CharTokenizer(train_text)
        if cfg.tokenizer_path:
            return load_sentencepiece(cfg.tokenizer_path)
        return cached_sentencepiece(train_text, cfg.vocab_size, cfg.model_type, cache_root())
    except TokenizerError as e:
        raise DataError(str(e)) from None


def tokenize(cfg: DataConfig, train_text: str, val_text: str, tok=None):
    """(tokenizer, training ids, held-out ids, held-out units); the tokenizer is `tok`, or
    else built from `train_text`."""
    if not train_text or not val_text:
        raise DataError(f"corpus {cfg.corpus}: empty training or held-out split")
    tok = tok or build_tokenizer(cfg, train_text)
    val, units = tok.encode_with_units(val_text)
    return tok, tok.encode(train_text), val, units


def text_corpus(cfg: DataConfig, train_text: str, val_text: str, tok=None) -> Corpus:
    """A text corpus from its two splits (tokenised by `tok`, else by a tokenizer of the
    training split)."""
    tok, train, val, units = tokenize(cfg, train_text, val_text, tok)
    return Corpus(
        vocab=tok,
        train=train,
        val=val,
        val_overlap=cached_overlap(train_text, val_text),
        val_unk_rate=float((val == 0).float().mean()),
        val_units=units,
    )
