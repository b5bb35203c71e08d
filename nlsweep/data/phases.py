"""Continual learning: `data.phases`, text corpora trained on one after another.

    phases      P_1 .. P_n, each a text corpus (its own training and held-out split) and a
                number of steps s_i; phase i trains steps (e_{i-1}, e_i], e_i = s_1 + .. + s_i
    vocabulary  one for all phases: characters, or one SentencePiece model, of the union of
                the phases' training splits (never a held-out split)
    b_j(t)      bits per byte of P_j's held-out windows after step t (the same
                `train.eval_batches` windows at every evaluation, so values compare over time)

Every evaluation after step t in phase i scores b_j(t) for j <= i + 1 (every phase trained
so far and the next: forward transfer), logged as `val/<name_j>/bpb`, and
`val/mean_bpb` = mean_{j <= i} b_j(t). The headline `val/*` metrics score the current
phase's held-out split (the last phase's, whole, at the end under `final_eval: full`).
At the end, per earlier phase j < n:
    forgetting/<name_j> = b_j(T) - min_t b_j(t)         (>= 0; 0 = nothing lost)
    forgetting/mean     = its mean over j < n
    continual/after_<name_i>/<name_j>/bpb = b_j(e_i)    (the phase matrix: row i trained
                                                         through, column j evaluated on)
Nothing else changes at a boundary: one optimizer and learning-rate schedule run across the
phases; the recurrent state restarts because the streams of a new corpus do.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import itertools
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from nlsweep.data.config import DataConfig
from nlsweep.data.corpora import file_digest, load_texts, prepared_root
from nlsweep.data.prepared import (
    FORMAT,
    prepared_corpus,
    read_tokenizer,
    save_tokenizer,
    splits_digest,
)
from nlsweep.data.registry import corpus_entry
from nlsweep.data.streams import Corpus, StreamBatcher, build_tokenizer, has_documents
from nlsweep.data.tokenizer import documents_of

LN2 = math.log(2)


def union_of_training(texts: list[tuple]):
    """What the shared vocabulary is learnt from: every phase's training split (one text,
    or every document when any phase's splits are documents)."""
    if not has_documents(*(t for pair in texts for t in pair)):
        return "\n".join(train for train, _ in texts)
    return [d for train, _ in texts for d in documents_of(train)]


def phase_tokenizer(cfg: DataConfig, texts: list[tuple]):
    """The one tokenizer of all phases, from (training, held-out) splits of each (DataError,
    one line, if it cannot be trained); a corpus without phases is one phase."""
    eod = has_documents(*(t for pair in texts for t in pair))
    return build_tokenizer(cfg, union_of_training(texts), eod)


def phase_of(ends: list[int], step: int) -> int:
    """The phase that trains step `step` (1-based; phase 0 before any step, the last one
    past the end), given each phase's last step `ends`."""
    return min(bisect.bisect_left(ends, max(step, 1)), len(ends) - 1)


class PhasedBatcher:
    """Training batches from phase 1's streams for s_1 steps, then phase 2's, ...; its state
    is every phase's cursor and the number of batches drawn."""

    def __init__(self, batchers: list[StreamBatcher], steps: list[int]):
        self.batchers = batchers
        self.ends = list(itertools.accumulate(steps))
        self.drawn = 0

    @property
    def phase(self) -> int:
        """The phase of the next batch."""
        return phase_of(self.ends, self.drawn + 1)

    def next(self):
        batcher = self.batchers[self.phase]
        self.drawn += 1
        return batcher.next()  # a new phase's first batch starts every stream: state resets

    def state_dict(self) -> dict:
        return {"drawn": self.drawn, "phases": [b.state_dict() for b in self.batchers]}

    def load_state_dict(self, sd: dict) -> None:
        self.drawn = int(sd["drawn"])
        for b, s in zip(self.batchers, sd["phases"], strict=True):
            b.load_state_dict(s)


@dataclass
class PhasedCorpus:
    """The phases' corpora, tokenised with one vocabulary."""

    vocab: object
    names: list[str]
    steps: list[int]
    parts: list[Corpus]
    accuracy_key = None
    generated = False
    _heldout: dict = field(default_factory=dict)

    @property
    def ends(self) -> list[int]:
        return list(itertools.accumulate(self.steps))

    def phase_at(self, step: int) -> int:
        """The phase that trained step `step` (`phase_of`)."""
        return phase_of(self.ends, step)

    def extra_evals(self, batch_size: int) -> dict:
        return {}

    def batchers(self, batch_size: int, seq_len: int, shuffle_seed: int | None = None):
        """(training batcher across the phases, phase 1's held-out batcher); with
        `shuffle_seed`, each phase's documents shuffled per epoch as `Corpus.batchers` does."""
        train = [p.batchers(batch_size, seq_len, shuffle_seed)[0] for p in self.parts]
        return PhasedBatcher(train, self.steps), self.heldout(0, batch_size, seq_len)[0]

    def heldout(self, j: int, batch_size: int, seq_len: int):
        """(held-out batcher, its unit batchers) of phase j, built once per shape."""
        key = (j, batch_size, seq_len)
        if key not in self._heldout:
            part = self.parts[j]
            self._heldout[key] = (
                StreamBatcher(part.val, batch_size, seq_len, "held-out"),
                part.unit_batchers(batch_size, seq_len),
            )
        return self._heldout[key]


def _shared_key(cfg: DataConfig, parts: list[DataConfig], texts: dict) -> str:
    """The key of the phases' shared tokenizer: each phase's registered digest (or the
    digest of its splits, read into `texts`, for a corpus that registers none) and the
    tokenizer's settings."""
    sources = []
    for i, p in enumerate(parts):
        kind = corpus_entry(p.corpus)
        if kind.digest is not None:
            sources.append([p.corpus, kind.digest(p)])
        else:
            texts[i] = load_texts(p)
            sources.append([p.corpus, splits_digest(*texts[i])])
    given = file_digest(Path(cfg.tokenizer_path)) if cfg.tokenizer_path else ""
    settings = [FORMAT, sources, cfg.tokenizer, cfg.vocab_size, cfg.model_type, given]
    return hashlib.sha256(json.dumps(settings).encode()).hexdigest()


def _shared_tokenizer(cfg: DataConfig, parts: list[DataConfig], texts: dict):
    """The one tokenizer of all phases, learnt from their training splits once and kept in
    the prepared root, so that a trial reads no raw text of a corpus with a digest."""
    folder = prepared_root() / "phases" / _shared_key(cfg, parts, texts)
    with contextlib.suppress(OSError, ValueError, KeyError):
        return read_tokenizer(folder)
    for i, p in enumerate(parts):
        if i not in texts:
            texts[i] = load_texts(p)
    tok = phase_tokenizer(cfg, [texts[i] for i in range(len(parts))])
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    with contextlib.suppress(OSError):  # unkept: the next trial learns it again
        tmp.mkdir(parents=True, exist_ok=True)
        save_tokenizer(tmp, tok)
        tmp.rename(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    return tok


def load_phases(cfg: DataConfig) -> PhasedCorpus:
    parts = cfg.phase_configs()
    texts: dict[int, tuple] = {}
    tok = _shared_tokenizer(cfg, parts, texts)
    # a corpus with a digest is mapped by it (prepared from its files if new); the others
    # from the splits already read
    corpora = [prepared_corpus(p, texts.get(i) if corpus_entry(p.corpus).digest is None
                               else None, tok) for i, p in enumerate(parts)]  # fmt: skip
    return PhasedCorpus(
        vocab=tok,
        names=[p.name for p in cfg.phases],
        steps=[p.steps for p in cfg.phases],
        parts=corpora,
    )


def phase_objectives(cfg) -> dict[str, str]:
    """What a phased corpus adds to every evaluation that can be an objective (the
    per-phase bpb starts only once a phase is next, so only the mean qualifies)."""
    return {"val/mean_bpb": "min"}


def phase_metrics(trainer, headline: dict) -> dict[str, float]:
    """The continual-learning metrics of the evaluation after `trainer.step` (see the
    notation above). `headline` holds the evaluation's `val/*` metrics of the current
    phase, reused where they scored the same windows."""
    corpus: PhasedCorpus = trainer.corpus
    cfg = trainer.cfg
    B, T = cfg.data.batch_size, cfg.data.seq_len
    step, final = trainer.step, trainer.step == cfg.train.steps
    cur = corpus.phase_at(step)
    out = {"phase/index": float(cur), "phase/end": float(step == corpus.ends[cur])}
    for name, part in zip(corpus.names, corpus.parts):  # each phase's leakage alarm
        out[f"data/{name}/val_overlap"] = part.val_overlap
        out[f"data/{name}/val_unk_rate"] = part.val_unk_rate
    for j in range(min(cur + 2, len(corpus.parts))):
        if j == cur and not (final and trainer.final_eval_full):
            b = headline["val/bpb"]  # the current phase's sampled windows, just scored
        else:
            held, units = corpus.heldout(j, B, T)
            trainer.evaluate(
                trainer.sampled_windows(held), trainer.unit_windows(False, units=units)
            )
            b = trainer.eval_nats / LN2 / trainer.eval_units["bytes"]
        out[f"val/{corpus.names[j]}/bpb"] = b
    out["val/mean_bpb"] = sum(out[f"val/{corpus.names[j]}/bpb"] for j in range(cur + 1)) / (cur + 1)
    if final:
        out.update(_at_end(corpus, trainer.history, out))
    return out


def _at_end(corpus: PhasedCorpus, history: list[dict], last: dict) -> dict[str, float]:
    """Forgetting per earlier phase and the phase matrix, from the run's evaluations."""
    out = {}
    for name in corpus.names[:-1]:
        key = f"val/{name}/bpb"
        out[f"forgetting/{name}"] = last[key] - min(h[key] for h in [*history, last] if key in h)
    out["forgetting/mean"] = sum(out.values()) / len(out)
    by_step = {int(h["step"]): h for h in history}
    for i, (trained, end) in enumerate(zip(corpus.names, corpus.ends)):
        row = last if i == len(corpus.ends) - 1 else by_step.get(end, {})
        for name in corpus.names:
            if f"val/{name}/bpb" in row:
                out[f"continual/after_{trained}/{name}/bpb"] = row[f"val/{name}/bpb"]
    return out
