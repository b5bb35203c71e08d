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
import multiprocessing
import os
import random
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np

from nlsweep.data.corpora import DataError
from nlsweep.data.overlap import SHINGLE, OverlapSketch, ShingleHasher, hits
from nlsweep.data.sources import heldout_rule
from nlsweep.data.tokenizer import (
    CharTokenizer,
    SentencePieceTokenizer,
    cached_sentencepiece_lines,
    utf8_lengths,
)

SPM_SENTENCES = 2_000_000
SEED = 0
BLOCK_CHARS = 1 << 22


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
        self.held_out = heldout_rule(cfg)
        self.chars: set[str] = set()
        self.lines: list[str] = []
        self.rng = random.Random(SEED)
        self.seen_lines = 0
        self.want_chars, self.want_lines = want_chars, want_lines
        self.sketch = OverlapSketch(None)  # its rate adapts to the held-out size
        self.docs = {"train": 0, "val": 0}
        self.chars_read = 0
        self.held = bytearray()  # each document's side, in order: pass 2 reads it back
        self._val: list[str] = []
        self._val_size = 0
        self._train: list[str] = []
        self._train_size = 0

    def add(self, doc: str) -> None:
        self.chars_read += len(doc)
        held = self.held_out(doc)
        self.held.append(held)
        if held:
            self.docs["val"] += 1
            self._val.append(doc + "\n")
            self._val_size += len(doc)
            if self._val_size >= BLOCK_CHARS:
                self.flush()
            return
        self.docs["train"] += 1
        if self.want_chars:
            self._train.append(doc)
            self._train_size += len(doc)
            if self._train_size >= BLOCK_CHARS:
                self.flush()
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

    def flush(self) -> None:
        """The documents gathered so far, a block at a time: the held-out ones into the
        sketch in one call (the hashes of pieces are those of their concatenation), the
        training ones' distinct characters into the vocabulary."""
        if self._val:
            self.sketch.add_heldout("".join(self._val))
        self._val, self._val_size = [], 0
        if self._train:  # the block's distinct characters, by counting code points
            cp = np.frombuffer("".join(self._train).encode("utf-32-le", "surrogatepass"),
                               dtype=np.uint32)  # fmt: skip
            low = np.flatnonzero(np.bincount(cp[cp < 1 << 16], minlength=1 << 16))
            self.chars.update(map(chr, low.tolist()))
            self.chars.update(map(chr, np.unique(cp[cp >= 1 << 16]).tolist()))
        self._train, self._train_size = [], 0


_WORKER_TOK = None
_WORKER_SKETCH = None


class _InProcess:
    """The pool's `submit` for one worker: the block is encoded here, now."""

    def submit(self, fn, *args) -> Future:
        done: Future = Future()
        done.set_result(fn(*args))
        return done


def _init_worker(kind: str, payload, frozen=None, k: int = 0) -> None:
    global _WORKER_TOK, _WORKER_SKETCH
    _WORKER_SKETCH = (frozen, ShingleHasher(k)) if frozen is not None else None
    if kind == "char":
        _WORKER_TOK = CharTokenizer(payload[0], eod=payload[1])
    else:
        _WORKER_TOK = SentencePieceTokenizer(payload)


def _encode_block(split: str, docs: list[str], id_dtype: str, before: str = ""):
    """(ids, held-out units or None, sampled held-out hashes this training block holds);
    `before`: the end of the previous training block (the shingles straddling the two)."""
    ids, units = _encode(split, docs, id_dtype)
    found = None
    if split == "train" and _WORKER_SKETCH is not None:
        frozen, hasher = _WORKER_SKETCH
        text = before + "".join(d + "\n" for d in docs)
        hasher.tail = np.zeros(0, dtype=np.uint64)  # this block's own start
        found = hits(frozen, hasher.update(text))
    return ids, units, found


def _encode(split: str, docs: list[str], id_dtype: str):
    tok = _WORKER_TOK
    if isinstance(tok, CharTokenizer):  # a token a character: one call for the block
        text = "".join(docs)
        ends = np.cumsum([len(d) for d in docs])
        ids = np.insert(tok.encode(text).numpy(), ends, tok.eod).astype(id_dtype)
        if split == "train":
            return ids, None
        nbytes = np.insert(utf8_lengths(text).astype(np.int64), ends, 0)
        chars = np.insert(np.ones(len(text), dtype=np.int64), ends, 0)
        return ids, {"bytes": nbytes, "chars": chars}
    if split == "train":
        return tok.encode_split(docs).numpy().astype(id_dtype), None
    ids, units = tok.encode_split_with_units(docs)
    return ids.numpy().astype(id_dtype), {k: v.numpy() for k, v in units.items()}


def _blocks(documents, held: bytearray):
    """(split, documents of about BLOCK_CHARS characters) in order, per split, each
    document on the side pass 1 put it."""
    pending = {"train": [], "val": []}
    size = {"train": 0, "val": 0}
    for k, doc in enumerate(documents):
        if k >= len(held):
            raise DataError("data.path: the corpus changed while it was prepared (more "
                            "documents on the second read); prepare it again")  # fmt: skip
        split = "val" if held[k] else "train"
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
    p1.flush()
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
    frozen = sketch.frozen()  # the training pass runs in the workers, beside the encoding
    if workers is None:  # a pool only pays once there are blocks to share out
        blocks = p1.chars_read // BLOCK_CHARS
        workers = min(8, os.cpu_count() or 1, blocks) if blocks >= 2 else 1
    with contextlib.ExitStack() as stack:
        files = {name: stack.enter_context(open(folder / f"{name}.bin", "wb"))
                 for name in ("train", "val", "val_bytes", "val_chars")}  # fmt: skip
        if workers > 1:
            # fork only a single-threaded process (a Ray worker or a driver with threads
            # spawns: forking a threaded process can deadlock its children)
            method = "fork" if threading.active_count() == 1 else "spawn"
            context = multiprocessing.get_context(method)
            init = (tok.kind, payload, frozen, SHINGLE)
            pool = stack.enter_context(ProcessPoolExecutor(
                workers, mp_context=context, initializer=_init_worker, initargs=init))  # fmt: skip
        else:
            _init_worker(tok.kind, payload, frozen, SHINGLE)
            pool = _InProcess()
        inflight: deque = deque()

        def drain(n: int) -> None:
            nonlocal unk, n_val
            while len(inflight) > n:
                split, docs, fut = inflight.popleft()
                ids, units, found = fut.result()
                ids.tofile(files[split])
                if split == "train":
                    sketch.mark(found)
                    continue
                unk += int((ids == 0).sum())
                n_val += len(ids)
                for k, v in units.items():
                    # int64 for now: the units' dtype is known once every block is
                    maxima[f"val_{k}"] = max(maxima[f"val_{k}"], int(v.max(initial=0)))
                    v.astype(np.int64).tofile(files[f"val_{k}"])

        shown = Progress(out, "pass 2", total=p1.chars_read)
        before = ""  # the last k - 1 characters of the training text so far
        for split, docs in _blocks(documents(), p1.held):
            shown.add(len(docs), sum(map(len, docs)))
            job = pool.submit(_encode_block, split, docs, ids_dt.name, before)
            inflight.append((split, docs, job))
            if split == "train":
                before = (before + "".join(d + "\n" for d in docs[-40:]))[-(SHINGLE - 1) :]
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
        procs = f"{workers} processes" if workers > 1 else "this process"
        out(f"  pass 2: encoded in {procs} [{time.perf_counter() - start:.1f} s]")
    return {"tokenizer": tok, "dtypes": dtypes, "val_overlap": sketch.estimate().value,
            "val_unk_rate": unk / max(n_val, 1)}  # fmt: skip
