"""The one entry from a data config to its corpus, whatever its registered form."""

from __future__ import annotations

from nlsweep.data.config import DataConfig
from nlsweep.data.corpora import load_texts
from nlsweep.data.registry import corpus_entry
from nlsweep.data.streams import text_corpus


def load_corpus(cfg: DataConfig):
    """The corpus of `cfg`: a text `Corpus` made from its registered texts, or what its
    registered `load` builds (a generated task, the phases)."""
    kind = corpus_entry(cfg.corpus)
    if kind.load is not None:
        return kind.load(cfg)
    return text_corpus(cfg, *load_texts(cfg))
