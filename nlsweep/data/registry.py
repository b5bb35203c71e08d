"""The registry of corpora: `data.corpus` in a spec -> where its data comes from, which
`data:` fields it reads, how they are checked, and which metrics it reports.

Two forms, one path. The built-ins register here exactly as a plugin does
(`nlsweep/data/kinds.py`), and the rest of the harness looks corpora up here and nowhere else.

    text    `texts(cfg) -> (training split, held-out split)`, each one string or a list of
            its documents (strings), never overlapping. nlsweep tokenizes them
            (data.tokenizer; documents apart by an end-of-document token), checks leakage,
            batches them as contiguous streams and scores the held-out split in bits per byte
            and character.
    ids     `ids(cfg) -> TokenSplits`: token ids already made (pre-tokenized), as blocks of
            integer arrays per split, with the vocabulary size and end-of-document id;
            nlsweep writes them to the same prepared arrays as a text corpus's, checks every
            id against the vocabulary and the leakage over id shingles, and scores loss per
            token (no text: no bits per byte or character).
    task    `load(cfg) -> corpus`, an object with the members of `nlsweep.data.Corpus` that a
            generated task needs (vocab, batchers, extra_evals, accuracy_key, generated,
            val_overlap, val_unk_rate): see `nlsweep.data.tasks.TaskCorpus`.

`uses` names the optional `data:` fields (OPTIONAL_FIELDS) the corpus reads; any other of
them set in a spec is refused, never ignored. `check(cfg)` checks and fills them in
(raising `ConfigError(key, expected)`), without I/O: it runs whenever a config is built.
`probe(cfg)` does the corpus's cheap I/O checks (its files exist and are readable, raising
`DataError`), run by `nlsweep validate` and before a sweep starts, never by a trial.
`digest(cfg)`, a string that changes whenever the splits would, keys the corpus's prepared
cache entry (`prepared.py`) without building the splits; without it, the key is the digest
of the splits `texts` returns. `stream(cfg)` yields the corpus's documents in order, each
call a new pass, split by the same digest rule as `texts`: the corpus is then prepared in two
streaming passes (`streaming.py`), never held whole.
`options`, a dataclass, types `data.options`: the corpus's own settings, validated like any
config section. `metrics(cfg)` names the metrics
the corpus adds to every evaluation, each with its better direction (`min` or `max`); they
can be a sweep's objective.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from models.errors import ConfigError
from models.registry import RegistryError, source_of
from nlsweep.config.builder import build

__all__ = [
    "OPTIONAL_FIELDS", "CorpusKind", "TokenSplits", "check_corpus", "corpus_entry", "corpus_names",
    "register_corpus",
]  # fmt: skip

OPTIONAL_FIELDS = (
    "path", "mixture", "dataset", "val_fraction", "text_field", "separator", "vocab_size",
    "num_kv_pairs", "key_len", "eval_lengths", "eval_segment", "task_seed",
)  # fmt: skip
"""`data:` fields only some corpora read (their unset values are None, "" or 0)."""


@dataclass(frozen=True)
class CorpusKind:
    """One registered corpus (see the module docstring for each member's contract)."""

    name: str
    texts: Callable | None
    load: Callable | None
    uses: frozenset
    check: Callable | None
    probe: Callable | None
    """Reads what the corpus needs without tokenizing (`nlsweep validate`, preflight)."""
    stream: Callable | None
    """Yields the corpus's documents one by one, for preparing it in bounded memory."""
    digest: Callable | None
    """Identifies the corpus's content without building its splits (the prepared cache's key)."""
    metrics: Callable
    options: type | None
    generated: bool
    """Sequences made on the fly: no text to tokenize, no end to the held-out split."""
    source: str
    ids: Callable | None = None
    """Pre-tokenized: `ids(cfg) -> TokenSplits` (the module docstring)."""

    @property
    def is_text(self) -> bool:
        """Text that nlsweep tokenizes (what a phase of data.phases must be)."""
        return self.texts is not None


@dataclass(frozen=True)
class TokenSplits:
    """What a pre-tokenized corpus's `ids(cfg)` returns. `train()` and `val()` each start a
    new pass over their split, yielding 1-D integer numpy arrays in order (blocks of any
    size: a split is never held whole); every id is below `vocab_size`; `eod`, when the ids
    hold documents, is the id that ends each one. `where` names the data in error lines."""

    train: Callable
    val: Callable
    vocab_size: int
    eod: int | None
    where: str


_CORPORA: dict[str, CorpusKind] = {}


def _no_metrics(cfg) -> dict[str, str]:
    return {}


def register_corpus(
    name: str,
    texts: Callable | None = None,
    *,
    load: Callable | None = None,
    uses=(),
    check: Callable | None = None,
    probe: Callable | None = None,
    digest: Callable | None = None,
    stream: Callable | None = None,
    metrics: Callable | dict | None = None,
    options: type | None = None,
    generated: bool | None = None,
    ids: Callable | None = None,
):
    """Register corpus `name`: `register_corpus("arith", texts_fn, options=ArithOptions)`
    for text, `register_corpus("copy", load=load_fn, metrics={"val/copy_acc": "max"})`
    for a generated task; or as a decorator of the `texts` function,
    `@register_corpus("arith", options=ArithOptions)`. A name registered twice is refused,
    naming both registrations."""
    if not isinstance(name, str) or not name.isidentifier():
        raise RegistryError(f"corpus {name!r}: a Python identifier such as my_corpus")
    unknown = sorted(set(uses) - set(OPTIONAL_FIELDS))
    if unknown:
        raise RegistryError(
            f"corpus {name}: uses {', '.join(unknown)}; expected some of "
            f"{', '.join(OPTIONAL_FIELDS)} (its own settings go in an options dataclass)"
        )
    if options is not None and not (
        isinstance(options, type) and dataclasses.is_dataclass(options)
    ):
        raise RegistryError(f"corpus {name}: options must be a dataclass, got {options!r}")
    if isinstance(metrics, dict):
        fixed = dict(metrics)
        for metric, better in fixed.items():
            if better not in ("min", "max"):
                raise RegistryError(f"corpus {name}: metric {metric} is better at min or max, "
                                    f"got {better!r}")  # fmt: skip
        metrics = lambda cfg: fixed  # noqa: E731 - the declaration as the callable form

    def add(fn: Callable | None) -> Callable | None:
        if sum(f is not None for f in (fn, load, ids)) != 1:
            raise RegistryError(f"corpus {name}: give exactly one of texts (a text corpus), "
                                "ids (pre-tokenized) or load (a generated task)")  # fmt: skip
        made = load is not None if generated is None else generated
        entry = CorpusKind(name, fn, load, frozenset(uses), check, probe, stream,
                           digest, metrics or _no_metrics,
                           options, made, source_of(fn or load or ids), ids)  # fmt: skip
        old = _CORPORA.get(name)
        if old is not None and (old.texts, old.load, old.ids) != (entry.texts, entry.load, ids):
            raise RegistryError(
                f"corpus {name} registered twice: by {old.source} and by {entry.source}"
            )
        _CORPORA[name] = entry
        return fn

    if texts is None and load is None and ids is None:
        return add
    add(texts)
    return texts or load or ids


def corpus_entry(name, key: str = "corpus") -> CorpusKind:
    """The registered corpus, or a ConfigError at `key` naming every registered one."""
    if name not in _CORPORA:
        raise ConfigError(key, f"one of {', '.join(_CORPORA)}, got {name!r}")
    return _CORPORA[name]


def corpus_names(text_only: bool = False) -> list[str]:
    """Every registered corpus in registration order (text corpora only, if asked)."""
    return [n for n, c in _CORPORA.items() if c.is_text or not text_only]


def check_corpus(cfg, kind: CorpusKind) -> None:
    """Build `cfg.options` with the corpus's options dataclass, run its `check`, then refuse
    each optional field that `cfg` sets but the corpus does not read, naming those that do."""
    if kind.options is None:
        if cfg.options:
            raise ConfigError("options", f"unset: corpus {kind.name} takes no options")
        cfg.options = None
    elif not isinstance(cfg.options, kind.options):
        cfg.options = build(kind.options, cfg.options or {}, "options.")
    if kind.check is not None:
        kind.check(cfg)
    for field in OPTIONAL_FIELDS:
        if field == "vocab_size" and not kind.generated:
            continue  # a text corpus's vocabulary is its tokenizer's (DataConfig checks it)
        if field in kind.uses or getattr(cfg, field, None) in (None, "", 0):
            continue
        users = [n for n, c in _CORPORA.items() if field in c.uses]
        why = f"unset unless corpus is {' or '.join(users)}" if users else "unset"
        raise ConfigError(field, why)
