"""The built-in corpora, registered through `register_corpus` exactly as a plugin's are.

pydoc            the documentation topics bundled with CPython (`pydoc_data.topics`):
                 needs no download; the quickstart's corpus
tinyshakespeare  input.txt; first (1 - val_fraction) trains, the rest is held out
wikitext2        valid.txt trains and test.txt is held out (the word-tokenised WikiText-2
                 splits used as a second text domain, not the WikiText-2 benchmark)
text             the files data.path names (a file, folder or glob of text, .jsonl, .parquet,
                 .gz, or a datasets folder), held out by document (`sources.py`)
tokens           pre-tokenized ids (.bin / .npy) with a declared vocabulary (`pretokenized.py`)
mqar, passkey    generated memory tasks (`tasks.py`)
phases           several text corpora in order, one vocabulary (`phases.py`)
"""

from __future__ import annotations

from models.errors import require
from nlsweep.data import corpora, pretokenized, sources, tasks
from nlsweep.data.phases import load_phases, phase_objectives
from nlsweep.data.registry import register_corpus


def _check_wikitext2(cfg) -> None:
    # refused with its reason before the generic "unset unless" line
    require(cfg.val_fraction is None, "val_fraction", "unset for wikitext2 (its held-out split "
            "is test.txt)")  # fmt: skip


register_corpus("pydoc", corpora.pydoc_texts, uses=("val_fraction",),
                check=corpora.check_tail_split)  # fmt: skip
register_corpus("tinyshakespeare", corpora.tinyshakespeare_texts,
                uses=("path", "val_fraction"), check=corpora.check_tail_split)  # fmt: skip
register_corpus("wikitext2", corpora.wikitext2_texts, uses=("path",), check=_check_wikitext2)
register_corpus("text", sources.source_texts, check=sources.check_source, probe=sources.probe,
                digest=sources.digest, stream=sources.stream,
                uses=("path", "mixture", "dataset", "val_fraction", "text_field",
                      "separator"))  # fmt: skip
register_corpus("tokens", ids=pretokenized.token_splits, check=pretokenized.check_tokens,
                probe=pretokenized.probe_tokens, digest=pretokenized.tokens_digest,
                options=pretokenized.TokensOptions,
                uses=("path", "val_fraction", "vocab_size"))  # fmt: skip
register_corpus("mqar", load=tasks.load_task, uses=("vocab_size", "num_kv_pairs", "task_seed"),
                check=tasks.check_mqar, metrics={"val/recall_acc": "max"})  # fmt: skip
register_corpus(
    "passkey",
    load=tasks.load_task,
    uses=("vocab_size", "key_len", "eval_lengths", "eval_segment", "task_seed"),
    check=tasks.check_passkey,
    metrics=tasks.passkey_metrics,
)
register_corpus("phases", load=load_phases, metrics=phase_objectives, generated=False)
