"""The one entry from a data config to its corpus: text, generated task, or phases."""

from __future__ import annotations

from nlsweep.data.config import DataConfig
from nlsweep.data.corpora import load_texts
from nlsweep.data.phases import load_phases
from nlsweep.data.streams import text_corpus
from nlsweep.data.tasks import TASKS, load_task


def load_corpus(cfg: DataConfig):
    """The corpus of `cfg`: a text `Corpus`, a generated task or a sequence of phases."""
    if cfg.corpus in TASKS:
        return load_task(cfg)
    if cfg.phases:
        return load_phases(cfg)
    return text_corpus(cfg, *load_texts(cfg))
