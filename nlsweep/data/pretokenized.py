"""Corpus `tokens`: ids that some tokenizer already made (nanoGPT's `train.bin`, a numpy
array), trained on as they are, never read as text.

    files       data.path: a .bin file (raw ids of data.options.dtype, uint16 or uint32,
                little-endian, as nanoGPT writes them) or .npy (an integer array; its own
                dtype), or a folder or glob of them, concatenated in name order
    vocabulary  data.vocab_size, declared: every id is checked to be below it, in one pass
                (one line naming the file and the first id's position otherwise)
    documents   with data.options.eod_id: the pieces that end with that id (a last piece
                without it is a document too), held out by the digest rule of text documents
                on their ids: d is held out iff the first 8 bytes of sha256(d's ids as
                little-endian uint32) / 2^64 < val_fraction (default 0.1); should a side be
                empty, the document of smallest (largest) digest moves across. Without
                eod_id, the ids are one document whose last val_fraction is held out.
    units       no text, so no bytes or characters per token: the held-out scores are per
                token (val/loss, val/ppl; no val/bpb or val/bpc)

The arrays are read through memory maps, in blocks: memory stays bounded whatever the size.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from models.errors import ConfigError, require
from nlsweep.data.corpora import DataError, file_digest, heldout_fraction
from nlsweep.data.registry import TokenSplits
from nlsweep.data.sources import resolve

SUFFIXES = (".bin", ".npy")
BLOCK = 1 << 24  # ids read at a time


@dataclass
class TokensOptions:
    """`data.options` of corpus tokens."""

    dtype: Literal["uint16", "uint32"] | None = None
    """.bin files: the width of each id (required for them; a .npy file names its own)."""
    eod_id: int | None = None
    """The id that ends each document, if the ids hold documents (e.g. GPT-2's 50256)."""

    def __post_init__(self):
        require(self.eod_id is None or self.eod_id >= 0, "eod_id", f"an id >= 0, got "
                f"{self.eod_id}")  # fmt: skip


def check_tokens(cfg) -> None:
    require(bool(cfg.path), "path", "a .bin or .npy file, or a folder or glob of them")
    require(cfg.vocab_size is not None and cfg.vocab_size >= 2, "vocab_size", "the vocabulary "
            f"size the ids were made with (>= 2), got {cfg.vocab_size}")  # fmt: skip
    eod = cfg.options.eod_id
    if eod is not None and eod >= cfg.vocab_size:
        raise ConfigError("options.eod_id", f"below vocab_size {cfg.vocab_size}, got {eod}")
    require(cfg.tokenizer == "char", "tokenizer", "unset for corpus tokens (the ids are made)")
    f = heldout_fraction(cfg)
    require(0 < f < 1, "val_fraction", f"in (0, 1), got {f}")


def _files(cfg) -> list[Path]:
    path = cfg.path
    p = Path(path)
    if p.is_dir():
        found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
        if not found:
            raise DataError(f"data.path: {p} has no .bin or .npy files")
        return found
    files = resolve(path)
    for f in files:
        if f.suffix.lower() not in SUFFIXES:
            raise DataError(f"{f}: not pre-tokenized ids; corpus tokens reads .bin or .npy "
                            "files (text goes in corpus: text)")  # fmt: skip
    return files


def _array(f: Path, dtype: str | None) -> np.ndarray:
    try:
        if f.suffix.lower() == ".npy":
            a = np.load(f, mmap_mode="r", allow_pickle=False)
        else:
            if dtype is None:
                raise DataError(f"{f}: a .bin file of raw ids; set data.options.dtype to "
                                "uint16 or uint32, the width they were written with")  # fmt: skip
            width = np.dtype(dtype).itemsize
            size = f.stat().st_size
            if size % width:
                raise DataError(f"{f}: {size} bytes is not a whole number of {dtype} ids; "
                                "expected data.options.dtype to be their width")  # fmt: skip
            a = np.memmap(f, dtype=np.dtype(dtype).newbyteorder("<"), mode="r")
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{f}: not a readable array of ids ({str(e).splitlines()[0]})") from None
    if a.ndim != 1 or a.dtype.kind not in "iu":
        raise DataError(f"{f}: {a.dtype} array of shape {a.shape}; expected one dimension "
                        "of integer ids")  # fmt: skip
    return a


def _blocks(arrays):
    for a in arrays:
        for i in range(0, len(a), BLOCK):
            yield a[i : i + BLOCK]


def _digest_u(ids: np.ndarray) -> float:
    raw = np.ascontiguousarray(ids, dtype="<u4").tobytes()
    return int.from_bytes(hashlib.sha256(raw).digest()[:8], "big") / 2.0**64


def _documents(arrays, eod: int):
    """(array index, start, end) of every document, in order (never crossing files: a file
    ends a document)."""
    for j, a in enumerate(arrays):
        start = 0
        for i in range(0, len(a), BLOCK):
            for e in np.flatnonzero(a[i : i + BLOCK] == eod) + (i + 1):
                yield j, start, int(e)
                start = int(e)
        if start < len(a):
            yield j, start, len(a)


def token_splits(cfg) -> TokenSplits:
    files = _files(cfg)
    arrays = [_array(f, cfg.options.dtype) for f in files]
    vocab = cfg.vocab_size
    for f, a in zip(files, arrays):
        for i in range(0, len(a), BLOCK):
            b = a[i : i + BLOCK]
            bad = np.flatnonzero((b < 0) | (b >= vocab))
            if len(bad):
                at = i + int(bad[0])
                raise DataError(f"{f}: id {int(a[at])} at position {at} is not below "
                                f"data.vocab_size {vocab}")  # fmt: skip
    frac = heldout_fraction(cfg)
    eod = cfg.options.eod_id
    where = str(cfg.path)
    if eod is None:
        total = sum(len(a) for a in arrays)
        cut = int(total * (1 - frac))
        if not 0 < cut < total:
            raise DataError(f"data.path: {where} holds {total} ids; too few to hold out "
                            f"{frac} of them")  # fmt: skip

        def part(lo: int, hi: int):
            def blocks():
                pos = 0
                for a in arrays:
                    a0, a1 = max(lo - pos, 0), min(hi - pos, len(a))
                    if a0 < a1:
                        yield from _blocks([a[a0:a1]])
                    pos += len(a)

            return blocks

        return TokenSplits(part(0, cut), part(cut, total), vocab, None, where)
    docs = list(_documents(arrays, eod))
    if len(docs) < 2:
        raise DataError(f"data.path: {where} holds {len(docs)} document (ending in "
                        f"options.eod_id {eod}); a held-out split needs two or more")  # fmt: skip
    us = np.array([_digest_u(arrays[j][a:b]) for j, a, b in docs])
    held = us < frac
    if not held.any():
        held[int(us.argmin())] = True
    if held.all():
        held[int(us.argmax())] = False

    def side(keep: bool):
        def blocks():
            for (j, a, b), h in zip(docs, held):
                if h == keep:
                    yield from _blocks([arrays[j][a:b]])

        return blocks

    return TokenSplits(side(False), side(True), vocab, eod, where)


def tokens_digest(cfg) -> str:
    """What the splits depend on: every file's bytes and name, dtype, eod_id, vocab_size and
    the held-out fraction."""
    h = hashlib.sha256()
    settings = [cfg.options.dtype, cfg.options.eod_id, cfg.vocab_size, heldout_fraction(cfg)]
    h.update(json.dumps(settings).encode())
    for f in _files(cfg):
        h.update(f"{f.name}\0{file_digest(f)}\0".encode())
    return h.hexdigest()


def probe_tokens(cfg) -> None:
    """`nlsweep validate`: the files resolve and read as one-dimensional integer arrays."""
    for f in _files(cfg):
        _array(f, cfg.options.dtype)
