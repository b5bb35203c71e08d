"""Preparing a corpus of documents in two streaming passes, so that memory stays bounded
whatever its size: the documents are read twice from their files and never held together.

    pass 1   each document's split (by digest, `sources.split_documents`'s rule); the
             training split's characters (the char vocabulary) or a seeded uniform sample of
             its lines (the SentencePiece trainer's input: at most `SPM_SENTENCES`, reservoir
             sampling with random.Random(SEED), then trained with SentencePiece's own threads);
             the held-out shingles the leakage alarm samples (`overlap.py`)
    pass 2   documents encoded in blocks of about `BLOCK_CHARS` characters by a pool of
             processes, results written in input order (so the arrays are the same whatever
             the pool's size); the training text streamed through the leakage sketch

With one tokenizer, the arrays equal those of tokenizing the two splits whole
(`tests/data/test_prepared.py`). The SentencePiece model itself is trained on
`tokenizer.SPM_THREADS` threads (a model depends on the thread count; the in-memory path
trains on one), and on a sample of the lines once a corpus has more than `SPM_SENTENCES`.
A corpus whose digest split leaves a side empty (a handful of documents) is prepared in
memory instead, where one document moves across.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from nlsweep.data.corpora import DataError
from nlsweep.data.overlap import OverlapSketch
from nlsweep.data.sources import digest_fraction as _u
from nlsweep.data.tokenizer import (
    CharTokenizer,
    SentencePieceTokenizer,
    cached_sentencepiece_lines,
)

SPM_SENTENCES = 2_000_000
SEED = 0
BLOCK_CHARS = 1 << 22
DEFAULT_FRACTION = 0.1


def _dtype(n: int, what: str) -> np.dtype:
    if n <= 1 << 16:
        return np.dtype(np.uint16)
    if n <= 1 << 32:
        return np.dtype(np.uint32)
    raise DataError(f"data.vocab_size: {what} of {n} overflows uint32 token ids")


def id_dtype(vocab: int) -> np.dtype:
    """uint16 while every id fits, else uint32 (beyond: one line)."""
    return _dtype(vocab, "a vocabulary")


def unit_dtype(largest: int) -> np.dtype:
    return _dtype(largest + 1, "a token's text")


class Progress:
    """A line every `every` seconds: documents and characters a second, and (in pass 2,
    whose total pass 1 counted) the share done and the time left."""

    def __init__(self, out, what: str, total: int | None = None, every: float = 5.0):
        self.out, self.what, self.total, self.every = out, what, total, every
        self.start = self.last = time.perf_counter()
        self.docs = self.chars = 0

    def add(self, docs: int, chars: int) -> None:
        self.docs += docs
        self.chars += chars
        now = time.perf_counter()
        if self.out is None or now - self.last < self.every:
            return
        self.last = now
        took = now - self.start
        rate = f"{self.docs / took:,.0f} documents/s, {self.chars / took / 1e6:,.1f} M/s"
        line = f"  {self.what}: {self.docs:,} documents, {self.chars / 1e6:,.1f} M characters"
        line += f" ({rate})"
        if self.total:
            share = self.chars / self.total
            left = took * (1 - share) / max(share, 1e-9)
            line += f", {100 * share:.0f}%, ETA {left:,.0f} s"
        self.out(line)


class EmptySide(Exception):
    """The digest split leaves one side empty: prepare in memory instead."""


class _Pass1:
    def __init__(self, cfg, want_chars: bool, want_lines: bool):
        self.frac = DEFAULT_FRACTION if cfg.val_fraction is None else cfg.val_fraction
        self.chars: set[str] = set()
        self.lines: list[str] = []
        self.rng = random.Random(SEED)
        self.seen_lines = 0
        self.want_chars, self.want_lines = want_chars, want_lines
        self.sketch = OverlapSketch(None)  # its rate adapts to the held-out size
        self.docs = {"train": 0, "val": 0}
        self.chars_read = 0

    def add(self, doc: str) -> None:
        self.chars_read += len(doc)
        if _u(doc) < self.frac:
            self.docs["val"] += 1
            self.sketch.add_heldout(doc + "\n")
            return
        self.docs["train"] += 1
        if self.want_chars:
            self.chars.update(doc)
        if self.want_lines:
            for line in doc.split("\n"):
                if not line.strip():
                    continue
                self.seen_lines += 1
                if len(self.lines) < SPM_SENTENCES:
                    self.lines.append(line)
                else:  # reservoir: every line kept with probability SPM_SENTENCES / seen
                    j = self.rng.randrange(self.seen_lines)
                    if j < SPM_SENTENCES:
                        self.lines[j] = line


_WORKER_TOK = None


def _init_worker(kind: str, payload) -> None:
    global _WORKER_TOK
    if kind == "char":
        _WORKER_TOK = CharTokenizer(payload[0], eod=payload[1])
    else:
        _WORKER_TOK = SentencePieceTokenizer(payload)


def _encode_block(split: str, docs: list[str], id_dtype: str):
    tok = _WORKER_TOK
    if split == "train":
        return tok.encode_split(docs).numpy().astype(id_dtype), None
    ids, units = tok.encode_split_with_units(docs)
    return ids.numpy().astype(id_dtype), {k: v.numpy() for k, v in units.items()}


def _blocks(documents, frac: float):
    """(split, documents of about BLOCK_CHARS characters) in order, per split."""
    pending = {"train": [], "val": []}
    size = {"train": 0, "val": 0}
    for doc in documents:
        split = "val" if _u(doc) < frac else "train"
        pending[split].append(doc)
        size[split] += len(doc)
        if size[split] >= BLOCK_CHARS:
            yield split, pending[split]
            pending[split], size[split] = [], 0
    for split in ("train", "val"):
        if pending[split]:
            yield split, pending[split]


def prepare_stream(folder: Path, cfg, documents, tok=None, out=None,
                   workers: int | None = None) -> dict:  # fmt: skip
    """Write the arrays of the corpus whose documents `documents()` yields (each call a new
    pass) into `folder`, with `tok` or a tokenizer of its training split; returns
    {tokenizer, val_overlap, val_unk_rate, sizes}. Raises EmptySide for a split that leaves
    a side empty."""
    start = time.perf_counter()
    char = cfg.tokenizer == "char"
    p1 = _Pass1(cfg, tok is None and char,
                tok is None and not char and not cfg.tokenizer_path)  # fmt: skip
    shown = Progress(out, "pass 1")
    for doc in documents():
        p1.add(doc)
        shown.add(1, len(doc))
    if not p1.docs["train"] or not p1.docs["val"]:
        raise EmptySide()
    if out:
        took = time.perf_counter() - start
        out(f"  pass 1: {p1.docs['train']:,} training and {p1.docs['val']:,} held-out "
            f"documents, {p1.chars_read:,} characters [{took:.1f} s]")  # fmt: skip
    if tok is None:
        if char:
            tok = CharTokenizer("".join(sorted(p1.chars)), eod=True)
        elif cfg.tokenizer_path:
            from nlsweep.data.streams import build_tokenizer

            tok = build_tokenizer(cfg, [], eod=True)
        else:
            from nlsweep.data.corpora import cache_root

            tok = cached_sentencepiece_lines(p1.lines, cfg.vocab_size, cfg.model_type,
                                             cache_root())  # fmt: skip
    del p1.lines
    ids_dt = id_dtype(len(tok))
    payload = ("".join(tok.chars), tok.eod is not None) if tok.kind == "char" else tok.model
    maxima = {"val_bytes": 0, "val_chars": 0}
    unk = n_val = 0
    sketch = p1.sketch
    workers = workers or min(8, os.cpu_count() or 1)
    with contextlib.ExitStack() as stack:
        files = {name: stack.enter_context(open(folder / f"{name}.bin", "wb"))
                 for name in ("train", "val", "val_bytes", "val_chars")}  # fmt: skip
        pool = stack.enter_context(ProcessPoolExecutor(workers, initializer=_init_worker,
                                                       initargs=(tok.kind, payload)))  # fmt: skip
        inflight: deque = deque()

        def drain(n: int) -> None:
            nonlocal unk, n_val
            while len(inflight) > n:
                split, docs, fut = inflight.popleft()
                ids, units = fut.result()
                ids.tofile(files[split])
                if split == "train":
                    for d in docs:
                        sketch.add_training(d + "\n")
                    continue
                unk += int((ids == 0).sum())
                n_val += len(ids)
                for k, v in units.items():
                    # int64 for now: the units' dtype is known once every block is
                    maxima[f"val_{k}"] = max(maxima[f"val_{k}"], int(v.max(initial=0)))
                    v.astype(np.int64).tofile(files[f"val_{k}"])

        shown = Progress(out, "pass 2", total=p1.chars_read)
        for split, docs in _blocks(documents(), p1.frac):
            shown.add(len(docs), sum(map(len, docs)))
            inflight.append((split, docs, pool.submit(_encode_block, split, docs, ids_dt.name)))
            drain(2 * workers)
        drain(0)
    dtypes = {"train": ids_dt, "val": ids_dt}
    for name, top in maxima.items():  # narrow the unit files, in blocks
        dtypes[name] = unit_dtype(top)
        wide = np.memmap(folder / f"{name}.bin", dtype=np.int64, mode="r")
        with open(folder / f"{name}.narrow", "wb") as f:
            for i in range(0, len(wide), 1 << 22):
                wide[i : i + (1 << 22)].astype(dtypes[name]).tofile(f)
        del wide
        (folder / f"{name}.narrow").replace(folder / f"{name}.bin")
    if out:
        out(f"  pass 2: encoded with {workers} processes [{time.perf_counter() - start:.1f} s]")
    return {"tokenizer": tok, "dtypes": dtypes, "val_overlap": sketch.estimate().value,
            "val_unk_rate": unk / max(n_val, 1)}  # fmt: skip
