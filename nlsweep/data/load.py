"""The one entry from a data config to its corpus, whatever its registered form."""

from __future__ import annotations

from nlsweep.data.config import DataConfig
from nlsweep.data.prepared import prepared_corpus
from nlsweep.data.registry import corpus_entry


def load_corpus(cfg: DataConfig, verify: bool = False, out=None):
    """The corpus of `cfg`: a text `Corpus` memory-mapped from its prepared cache entry
    (prepared now if there is none), or what its registered `load` builds (a generated
    task, the phases). `verify`: check a prepared entry's sha256 digests, as the sweep's
    preflight does once for all its trials (a trial checks the files' sizes); `out(line)`
    hears a preparation's progress."""
    kind = corpus_entry(cfg.corpus)
    if kind.load is not None:
        return kind.load(cfg)
    return prepared_corpus(cfg, verify=verify, out=out)
