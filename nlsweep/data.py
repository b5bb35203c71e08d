"""Text corpora, held-out splits, tokenisation (`nlsweep/tokenizer.py`) and contiguous-stream
batching.

Corpora (`data.corpus`):
    pydoc            the documentation topics bundled with CPython (`pydoc_data.topics`):
                     needs no download; the quickstart's corpus
    tinyshakespeare  input.txt; first (1 - val_fraction) trains, the rest is held out
    wikitext2        valid.txt trains and test.txt is held out (the word-tokenised WikiText-2
                     splits used as a second text domain, not the WikiText-2 benchmark)
    text             any UTF-8 file given by data.path, split like tinyshakespeare
Files resolve from `data.path`, then `$NLSWEEP_DATA/<folder>/`, then the user cache
(`$XDG_CACHE_HOME/nlsweep/<folder>/`; folder = tinyshakespeare or wikitext-2), and are
otherwise downloaded there and sha256-checked.

Batches are B contiguous streams: the training tokens are cut into B rows and batch k is
columns [kT, (k+1)T) of every row, so row b continues where it stopped (persistent recurrent
state depends on this). The vocabulary (characters, or a SentencePiece model) comes from the
training split alone; id 0 is <unk>.
"""

from __future__ import annotations

import hashlib
import io
import os
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from models.common import ConfigError, require
from models.teach import IGNORE
from nlsweep.tasks import TASKS, load_task
from nlsweep.tokenizer import (
    CharTokenizer,
    SentencePieceTokenizer,
    TokenizerError,
    cached_sentencepiece,
    load_sentencepiece,
)

DEFAULT_VAL_FRACTION = 0.1
SHINGLE = 32

# Folder names under $NLSWEEP_DATA and the cache (the shared data layout's spelling).
FOLDERS = {"tinyshakespeare": "tinyshakespeare", "wikitext2": "wikitext-2"}
# name -> files, their sha256, and where to fetch them (url, member inside a zip or None)
REMOTE = {
    "tinyshakespeare": {
        "input.txt": (
            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            None,
        ),
    },
    "wikitext2": {
        "valid.txt": (
            "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
            "https://wikitext.smerity.com/wikitext-2-v1.zip",
            "wikitext-2/wiki.valid.tokens",
        ),
        "test.txt": (
            "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
            "https://wikitext.smerity.com/wikitext-2-v1.zip",
            "wikitext-2/wiki.test.tokens",
        ),
    },
}


class DataError(RuntimeError):
    """A corpus cannot be found, fetched or used; the message is one line."""


@dataclass
class DataConfig:
    """`data:` section."""

    corpus: Literal["pydoc", "tinyshakespeare", "wikitext2", "text", "mqar", "passkey"] = "pydoc"
    """A text corpus (characters), or a synthetic memory task (`nlsweep/tasks.py`)."""
    path: str = ""
    """Folder holding the corpus files (a file for `text`); empty = NLSWEEP_DATA / cache."""
    seq_len: int = 64
    """Tokens per row per batch (the truncated-BPTT window)."""
    batch_size: int = 16
    """Number of contiguous streams B."""
    val_fraction: float | None = None
    """Held-out tail of single-file corpora (default 0.1); not allowed for wikitext2."""
    vocab_size: int | None = None
    """mqar: tokens in the vocabulary (default 64; 0 is filler, then keys, then values);
    passkey: default 32 (2 markers, filler tokens, the 10 digits last)."""
    num_kv_pairs: int | None = None
    """mqar: key-value pairs per sequence, all queried at its end (default 8)."""
    key_len: int | None = None
    """passkey: digits in the key (default 4)."""
    eval_lengths: list[int] | None = None
    """passkey: further held-out sequence lengths to report accuracy at (default none)."""
    eval_segment: int | None = None
    """passkey: read each `eval_lengths` sequence in segments of this many tokens, one model
    call each, the model's state carried from segment to segment under state.mode persistent
    and fresh per segment under reset: recall across calls, i.e. through carried memory
    (default: one call per sequence)."""
    task_seed: int = 0
    """mqar, passkey: seed of the generated training and held-out sequences."""
    tokenizer: Literal["char", "sentencepiece"] = "char"
    """Text corpora: characters of the training split, or a SentencePiece model trained on
    the training split alone (`nlsweep/tokenizer.py`; cached, so trials share one)."""
    model_type: Literal["unigram", "bpe"] | None = None
    """sentencepiece: the subword model (default unigram)."""
    tokenizer_path: str = ""
    """sentencepiece: a trained model file to use instead of training one."""

    def __post_init__(self):
        task_fields = {
            "mqar": ("num_kv_pairs",),
            "passkey": ("key_len", "eval_lengths", "eval_segment"),
        }
        for task, fields in task_fields.items():
            for key in fields if self.corpus != task else ():
                require(getattr(self, key) is None, key, f"unset unless corpus is {task}")
        if self.corpus == "passkey":
            self.vocab_size = 32 if self.vocab_size is None else self.vocab_size
            self.key_len = 4 if self.key_len is None else self.key_len
            require(self.key_len >= 1, "key_len", f">= 1, got {self.key_len}")
            require(
                self.vocab_size >= 14, "vocab_size", f">= 14 for passkey, got {self.vocab_size}"
            )
            if self.eval_segment is not None:
                require(self.eval_lengths, "eval_segment", "set with eval_lengths")
                require(self.eval_segment >= 1, "eval_segment", f">= 1, got {self.eval_segment}")
            shortest = 2 * self.key_len + 3
            for n in [self.seq_len, *(self.eval_lengths or [])]:
                require(
                    n >= shortest,
                    "seq_len" if n == self.seq_len else "eval_lengths",
                    f"at least 2 x key_len + 3 = {shortest} tokens, got {n}",
                )
        if self.corpus == "mqar":
            self.vocab_size = 64 if self.vocab_size is None else self.vocab_size
            self.num_kv_pairs = 8 if self.num_kv_pairs is None else self.num_kv_pairs
            require(self.num_kv_pairs >= 1, "num_kv_pairs", f">= 1, got {self.num_kv_pairs}")
            require(
                (self.vocab_size - 1) // 2 >= self.num_kv_pairs,
                "vocab_size",
                f"at least {2 * self.num_kv_pairs + 1} for {self.num_kv_pairs} distinct keys, "
                f"got {self.vocab_size}",
            )
            require(
                self.seq_len >= 4 * self.num_kv_pairs,
                "seq_len",
                f"at least 4 x num_kv_pairs = {4 * self.num_kv_pairs}, got {self.seq_len}",
            )
        if self.corpus in TASKS:
            require(not self.path, "path", "unset for a generated task")
            require(self.task_seed >= 0, "task_seed", f">= 0, got {self.task_seed}")
        else:
            require(self.task_seed == 0, "task_seed", "unset unless corpus is mqar or passkey")
        self._check_tokenizer()
        require(self.seq_len >= 1, "seq_len", f"a positive integer, got {self.seq_len}")
        require(self.batch_size >= 1, "batch_size", f"a positive integer, got {self.batch_size}")
        if self.val_fraction is not None:
            require(
                0 < self.val_fraction < 1,
                "val_fraction",
                f"a fraction in (0, 1), got {self.val_fraction}",
            )
            require(
                self.corpus != "wikitext2",
                "val_fraction",
                "unset for wikitext2 (its held-out split is test.txt)",
            )
        require(self.corpus != "text" or self.path, "path", "a text file path for corpus: text")

    def _check_tokenizer(self) -> None:
        spm = self.tokenizer == "sentencepiece"
        require(not spm or self.corpus not in TASKS, "tokenizer", "char for a generated task")
        if self.corpus in TASKS:
            pass
        elif not spm:
            require(self.vocab_size is None, "vocab_size", "unset unless corpus is a task or "
                    "tokenizer is sentencepiece")  # fmt: skip
        elif self.tokenizer_path:
            require(self.vocab_size is None, "vocab_size", "unset with tokenizer_path (the "
                    "model has its own)")  # fmt: skip
            require(self.model_type is None, "model_type", "unset with tokenizer_path")
        else:
            require(self.vocab_size is not None, "vocab_size", "a vocabulary size for "
                    "tokenizer sentencepiece (or a trained model in tokenizer_path)")  # fmt: skip
            require(self.vocab_size >= 2, "vocab_size", f">= 2, got {self.vocab_size}")
            self.model_type = self.model_type or "unigram"
        if not spm:
            require(
                self.model_type is None, "model_type", "unset unless tokenizer is sentencepiece"
            )
            require(not self.tokenizer_path, "tokenizer_path", "unset unless tokenizer is "
                    "sentencepiece")  # fmt: skip


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "nlsweep"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _download(name: str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    blobs: dict[str, bytes] = {}
    for fname, (sha, url, member) in REMOTE[name].items():
        try:
            if url not in blobs:
                with urllib.request.urlopen(url, timeout=30) as r:
                    blobs[url] = r.read()
        except OSError as e:
            files = ", ".join(REMOTE[name])
            raise DataError(
                f"corpus {name}: not found locally and the download from {url} failed ({e}); "
                f"put {files} in $NLSWEEP_DATA/{FOLDERS[name]}/, {folder}/ or data.path"
            ) from None
        data = blobs[url]
        if member is not None:
            data = zipfile.ZipFile(io.BytesIO(data)).read(member)
        if hashlib.sha256(data).hexdigest() != sha:
            raise DataError(f"corpus {name}: downloaded {fname} does not match sha256 {sha}")
        tmp = folder / f".{fname}.part"
        tmp.write_bytes(data)
        tmp.replace(folder / fname)  # atomic: a half-written file never looks complete


def resolve_files(cfg: DataConfig, download: bool = True) -> dict[str, Path]:
    """The files of `cfg.corpus`, found or fetched; raises DataError with the places looked."""
    if cfg.corpus == "pydoc":
        return {}
    if cfg.corpus == "text":
        p = Path(cfg.path)
        if not p.is_file():
            raise DataError(f"data.path: {p} is not a readable text file")
        return {"text": p}
    names = list(REMOTE[cfg.corpus])
    if cfg.path:  # asked for by name: another copy found elsewhere would hide the typo
        folder = Path(cfg.path)
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise DataError(
                f"data.path: {folder} has no {', '.join(missing)} (corpus {cfg.corpus}); "
                "fix the path, or leave it unset to use $NLSWEEP_DATA or the cache"
            )
        return {n: folder / n for n in names}
    candidates = []
    if os.environ.get("NLSWEEP_DATA"):
        candidates.append(Path(os.environ["NLSWEEP_DATA"]) / FOLDERS[cfg.corpus])
    cache = cache_root() / FOLDERS[cfg.corpus]
    candidates.append(cache)
    for folder in candidates:
        if all((folder / n).is_file() for n in names):
            return {n: folder / n for n in names}
    if not download:
        raise DataError(
            f"corpus {cfg.corpus}: {', '.join(names)} not found in "
            + ", ".join(str(c) for c in candidates)
        )
    _download(cfg.corpus, cache)
    return {n: cache / n for n in names}


def read_text(path: Path) -> str:
    """A corpus file as text, or one line saying why it is not usable as one."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: unreadable ({e.strerror or e})") from None
    if not raw.strip():
        raise DataError(f"{path}: empty; a corpus needs text to train on and to hold out")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
            "a corpus is a text file"
        ) from None
    if "\x00" in text:
        raise DataError(f"{path}: binary (NUL bytes at offset {text.index(chr(0))}); "
                        "a corpus is a text file")  # fmt: skip
    return text


def check_fits(cfg: DataConfig, train_tokens: int, val_tokens: int) -> None:
    """Both splits (their lengths in tokens) fill `batch_size` streams of at least `seq_len`
    tokens, or one line naming the field; what `StreamBatcher` would refuse mid-trial."""
    unit = "characters" if cfg.tokenizer == "char" else "tokens"
    for where, n in (("training", train_tokens), ("held-out", val_tokens)):
        row_len = (n - 1) // cfg.batch_size
        if row_len < cfg.seq_len:
            raise DataError(
                f"data.seq_len: at most {max(row_len, 0)} so that the {where} split of corpus "
                f"{cfg.corpus} ({n} {unit}) fills {cfg.batch_size} streams, got {cfg.seq_len}"
            )


def load_texts(cfg: DataConfig) -> tuple[str, str]:
    """(training text, held-out text); the two never overlap by construction."""
    files = resolve_files(cfg)
    if cfg.corpus == "wikitext2":
        return read_text(files["valid.txt"]), read_text(files["test.txt"])
    if cfg.corpus == "pydoc":
        from pydoc_data.topics import topics

        text = "\n\n".join(topics[k] for k in sorted(topics))
    else:
        text = read_text(files.get("text") or files["input.txt"])
    frac = DEFAULT_VAL_FRACTION if cfg.val_fraction is None else cfg.val_fraction
    cut = int(len(text) * (1 - frac))
    return text[:cut], text[cut:]


def shingle_overlap(train: str, val: str, k: int = SHINGLE) -> float:
    """Fraction of the held-out text's k-character shingles that also occur in training.

    A leakage alarm: a corpus built by repeating its own text scores near 1. Shingles are
    compared by a 64-bit hash of their UTF-32 code points (collisions are negligible here).
    """

    def hashes(s: str) -> np.ndarray:
        codes = np.frombuffer(s.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        if len(codes) < k:
            return np.zeros(0, dtype=np.uint64)
        rng = np.random.default_rng(12345)
        weights = rng.integers(1, 2**63, size=k, dtype=np.uint64) | np.uint64(1)
        windows = np.lib.stride_tricks.sliding_window_view(codes, k)
        out = np.empty(len(windows), dtype=np.uint64)
        step = 1 << 15  # bounded temporaries: k * step * 8 bytes
        with np.errstate(over="ignore"):
            for i in range(0, len(windows), step):
                out[i : i + step] = (windows[i : i + step] * weights).sum(axis=1, dtype=np.uint64)
        return out

    v = hashes(val)
    if len(v) == 0:
        return 0.0
    return float(np.isin(v, np.unique(hashes(train))).mean())


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


def cached_overlap(train: str, val: str) -> float:
    """`shingle_overlap`, remembered on disk by the texts' hash: every trial of a sweep reads
    the same split, and recomputing it cost each trial about 1.5 s."""
    digest = hashlib.sha256(f"{SHINGLE}\0{len(train)}\0{train}\0{val}".encode()).hexdigest()
    path = cache_root() / "overlap" / digest
    try:
        return float(path.read_text())
    except (OSError, ValueError):
        pass
    value = shingle_overlap(train, val)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{digest}.{os.getpid()}.part")
        tmp.write_text(repr(value))
        tmp.replace(path)
    except OSError:
        pass  # a read-only cache only costs the recomputation
    return value


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


def tokenize(cfg: DataConfig, train_text: str, val_text: str):
    """(tokenizer, training ids, held-out ids, held-out units)."""
    if not train_text or not val_text:
        raise DataError(f"corpus {cfg.corpus}: empty training or held-out split")
    tok = build_tokenizer(cfg, train_text)
    val, units = tok.encode_with_units(val_text)
    return tok, tok.encode(train_text), val, units


def load_corpus(cfg: DataConfig) -> Corpus:
    if cfg.corpus in TASKS:
        return load_task(cfg)
    train_text, val_text = load_texts(cfg)
    tok, train, val, units = tokenize(cfg, train_text, val_text)
    return Corpus(
        vocab=tok,
        train=train,
        val=val,
        val_overlap=cached_overlap(train_text, val_text),
        val_unk_rate=float((val == 0).float().mean()),
        val_units=units,
    )
