"""`data.mixture`: the training documents of several sources interleaved by weight.

    sources    S_1 .. S_m, each a path (as `data.path` of corpus text) with weight w_i > 0
    split      each source's documents are held out by the digest rule of `sources.py`
               (document d is held out iff u(d) < val_fraction), with no document moved
               across: a small source may hold nothing out
    training   N = n_1 + .. + n_m draws (n_i: S_i's training documents). Draw k picks source
               i with probability w_i / sum(w), from random.Random(MIXTURE_SEED) (Python's
               `random.choices`), and takes S_i's next training document, S_i starting over
               from its first once it runs out: a source of weight share p supplies about
               p N documents, whatever its size (a small one repeats, a large one is cut)
    held-out   every source's held-out documents, source after source, unweighted
    streamed   the same order from the files, read as it goes: one counting pass for the n_i,
               then the draws from one reader per source, then the held-out documents

The report's header names the sources with their weights and shares.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from nlsweep.data.corpora import DataError, heldout_fraction

MIXTURE_SEED = 0


def draws(counts: list[int], weights: list[float]) -> Iterator[int]:
    """The source of each of the N = sum(counts) training draws."""
    live = [i for i, n in enumerate(counts) if n]
    if not live:
        return
    rng = random.Random(MIXTURE_SEED)
    w = [weights[i] for i in live]
    for _ in range(sum(counts)):
        yield rng.choices(live, weights=w)[0]


def _no_heldout(cfg) -> DataError:
    return DataError(f"data.mixture: no source holds out a document at val_fraction "
                     f"{heldout_fraction(cfg)}; raise it or add documents")  # fmt: skip


def mixed_texts(cfg, docs: list[list[str]], heldout: Callable[[str], bool]) -> tuple:
    """(training documents in drawn order, held-out documents) of the sources' `docs`."""
    train = [[d for d in ds if not heldout(d)] for ds in docs]
    val = [d for ds in docs for d in ds if heldout(d)]
    if not val:
        raise _no_heldout(cfg)
    pos = [0] * len(train)
    mixed = []
    for i in draws([len(t) for t in train], [s.weight for s in cfg.mixture]):
        mixed.append(train[i][pos[i] % len(train[i])])
        pos[i] += 1
    if not mixed:
        raise DataError("data.mixture: no training documents (every one is held out)")
    return mixed, val


def mixed_stream(cfg, parts: list, stream_one: Callable, heldout: Callable[[str], bool]):
    """The documents of `mixed_texts`, training then held-out, read from the files as they
    go (`stream_one(part)` reads one source)."""
    counts = [sum(1 for d in stream_one(p) if not heldout(d)) for p in parts]
    readers: list[Iterator[str] | None] = [None] * len(parts)

    def next_training(i: int) -> str:
        for _ in range(2):  # at the end of the source, once more from its start
            if readers[i] is None:
                readers[i] = (d for d in stream_one(parts[i]) if not heldout(d))
            for d in readers[i]:
                return d
            readers[i] = None
        raise DataError(f"data.mixture[{i}]: {parts[i].path} changed while it was read")

    any_val = False
    for i in draws(counts, [s.weight for s in cfg.mixture]):
        yield next_training(i)
    for p in parts:
        for d in stream_one(p):
            if heldout(d):
                any_val = True
                yield d
    if not any_val:
        raise _no_heldout(cfg)
