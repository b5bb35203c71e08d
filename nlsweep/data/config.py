"""`data:`, the typed config of a trial's data: which corpus (a text file, a generated task,
or several text corpora in phases), its files and held-out split, its tokenizer, and the batch
shape; each field checked on its own and against the others, each error naming its key.

Corpora (`data.corpus`) are registered (`registry.py`); the built-ins are listed in
`kinds.py`, and where their files come from in `corpora.py`. Which of the optional fields a
corpus reads, and their rules, come from its registration.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Literal

from models.errors import require
from nlsweep.config.builder import build
from nlsweep.data.corpora import DataError
from nlsweep.data.hub import HubDataset
from nlsweep.data.registry import check_corpus, corpus_entry, corpus_names

PHASE_NAME = re.compile(r"[A-Za-z0-9_]{1,40}")


@dataclass
class PhaseConfig:
    """One entry of `data.phases`: a text corpus trained on for `steps` steps."""

    corpus: str | None = None
    """The phase's text corpus: any registered one (its splits as for `data.corpus`)."""
    steps: int = 0
    """Training steps on this corpus; a multiple of train.eval_every, so that an evaluation
    ends the phase."""
    path: str = ""
    """As `data.path`, for this phase's corpus."""
    val_fraction: float | None = None
    """As `data.val_fraction`, for this phase's corpus."""
    text_field: str = ""
    """As `data.text_field`, for this phase's corpus."""
    separator: str = ""
    """As `data.separator`, for this phase's corpus."""
    name: str = ""
    """The phase in metric names (`val/<name>/bpb`); default the corpus."""
    options: dict[str, Any] | None = None
    """As `data.options`, for this phase's corpus."""

    def __post_init__(self):
        texts = corpus_names(text_only=True)
        require(self.corpus in texts, "corpus", f"one of {', '.join(texts)}, got {self.corpus!r}")
        require(self.steps >= 1, "steps", f"a positive number of steps, got {self.steps}")
        check_corpus(self, corpus_entry(self.corpus))
        self.name = self.name or self.corpus
        require(
            PHASE_NAME.fullmatch(self.name),
            "name",
            f"1-40 letters, digits or _ (it names metrics: val/<name>/bpb), got {self.name!r}",
        )


@dataclass
class MixtureSource:
    """One entry of `data.mixture`: a source of documents and its share of training."""

    path: str = ""
    """As `data.path` of corpus text: a file, folder or glob."""
    weight: float = 1.0
    """Its probability of supplying the next training document, once normalised."""
    name: str = ""
    """The source in the report; default its position, source0, source1, ..."""
    text_field: str = ""
    """As `data.text_field`, for this source."""
    separator: str = ""
    """As `data.separator`, for this source."""

    def __post_init__(self):
        require(bool(self.path), "path", "a file, folder or glob of documents")
        require(self.weight > 0, "weight", f"a positive weight, got {self.weight}")
        require(not self.name or PHASE_NAME.fullmatch(self.name), "name",
                f"1-40 letters, digits or _, got {self.name!r}")  # fmt: skip


@dataclass
class DataConfig:
    """`data:` section."""

    corpus: str | None = None
    """A registered corpus (`nlsweep/data/kinds.py` lists the built-ins: text corpora,
    synthetic memory tasks), or `phases` (the default when `phases` is set; otherwise the
    default is pydoc)."""
    phases: list[PhaseConfig] | None = None
    """Continual learning (`nlsweep/data/phases.py`): text corpora trained on one after another,
    with one vocabulary learnt from all their training splits; every evaluation scores the
    held-out split of each phase trained so far and of the next. Replaces corpus, path and
    val_fraction, which each phase sets."""
    path: str = ""
    """Folder holding the corpus files; empty = NLSWEEP_DATA / cache. For `text`: a file,
    a folder or a glob of text, .jsonl, .parquet or .gz files, or a datasets folder."""
    mixture: list[MixtureSource] | None = None
    """text: several sources instead of `path`, each held out by document like `path`, their
    training documents interleaved by a seeded weighted draw (`nlsweep/data/sources.py`)."""
    dataset: HubDataset | None = None
    """text: instead of `path`, a Hugging Face dataset loaded with `datasets.load_dataset`
    {name, config, split, data_files, revision} (`nlsweep/data/hub.py`)."""
    text_field: str = ""
    """text: the field of .jsonl / .parquet / datasets rows holding the text (default text)."""
    separator: str = ""
    """text: a string that separates documents inside text files (e.g. "<|endoftext|>");
    unset: each text file is one document."""
    shuffle: bool = False
    """Text corpora of documents: read the training documents in a fresh order each epoch,
    drawn from (shuffle_seed, epoch) (`nlsweep/data/order.py`); unset: in their order."""
    shuffle_seed: int = 0
    """shuffle: the seed of the orders (apart from train.seed, so that seeds of a sweep can
    share one data order or vary it, as the space says)."""
    seq_len: int = 64
    """Tokens per row per batch (the truncated-BPTT window)."""
    batch_size: int = 16
    """Number of contiguous streams B."""
    val_fraction: float | None = None
    """Held-out tail of single-file corpora (default 0.1); not allowed for wikitext2."""
    vocab_size: int | None = None
    """mqar: tokens in the vocabulary (default 64; 0 is filler, then keys, then values);
    passkey: default 32 (2 markers, filler tokens, the 10 digits last)."""
    num_kv_pairs: int | None = None
    """mqar: key-value pairs per sequence, all queried at its end (default 8)."""
    key_len: int | None = None
    """passkey: digits in the key (default 4)."""
    eval_lengths: list[int] | None = None
    """passkey: further held-out sequence lengths to report accuracy at (default none)."""
    eval_segment: int | None = None
    """passkey: read each `eval_lengths` sequence in segments of this many tokens, one model
    call each, the model's state carried from segment to segment under state.mode persistent
    and fresh per segment under reset: recall across calls, i.e. through carried memory
    (default: one call per sequence)."""
    task_seed: int = 0
    """mqar, passkey: seed of the generated training and held-out sequences."""
    tokenizer: Literal["char", "sentencepiece"] = "char"
    """Text corpora: characters of the training split, or a SentencePiece model trained on
    the training split alone (`nlsweep/data/tokenizer.py`; cached, so trials share one)."""
    model_type: Literal["unigram", "bpe"] | None = None
    """sentencepiece: the subword model (default unigram)."""
    tokenizer_path: str = ""
    """sentencepiece: a trained model file to use instead of training one."""
    options: dict[str, Any] | None = None
    """The corpus's own settings, typed by the options dataclass it registered with (a
    plugin corpus's; the built-ins take none)."""

    def __post_init__(self):
        if isinstance(self.dataset, dict):  # (built in code rather than from a spec)
            self.dataset = build(HubDataset, self.dataset, "dataset.")
        self._check_phases()
        kind = corpus_entry(self.corpus)
        self._check_tokenizer(kind)
        require(self.seq_len >= 1, "seq_len", f"a positive integer, got {self.seq_len}")
        require(self.batch_size >= 1, "batch_size", f"a positive integer, got {self.batch_size}")
        check_corpus(self, kind)
        require(not (self.shuffle and kind.generated), "shuffle", "unset for a generated task "
                "(its sequences are drawn from task_seed)")  # fmt: skip
        require(self.shuffle or not self.shuffle_seed, "shuffle_seed", "unset unless shuffle")
        require(0 <= self.shuffle_seed < 2**32, "shuffle_seed", f"an integer in [0, 2^32), got "
                f"{self.shuffle_seed}")  # fmt: skip

    def _check_phases(self) -> None:
        if self.phases is None:
            require(self.corpus != "phases", "phases", "a list of phases for corpus: phases")
            self.corpus = self.corpus or "pydoc"
            return
        where = "unset with phases (each phase sets its own)"
        require(self.corpus in (None, "phases"), "corpus", where)
        require(not self.path, "path", where)
        require(self.val_fraction is None, "val_fraction", where)
        require(not self.text_field, "text_field", where)
        require(not self.separator, "separator", where)
        require(len(self.phases) >= 2, "phases", f"at least two phases, got {len(self.phases)}")
        seen = set()
        for i, p in enumerate(self.phases):
            require(p.name not in seen, f"phases[{i}].name", f"unique among the phases (two "
                    f"are {p.name}: name them)")  # fmt: skip
            seen.add(p.name)
        self.corpus = "phases"

    def phase_configs(self) -> list[DataConfig]:
        """Each phase as a single-corpus config with this one's tokenizer and batch shape."""
        return [
            dataclasses.replace(
                self,
                corpus=p.corpus,
                path=p.path,
                val_fraction=p.val_fraction,
                text_field=p.text_field,
                separator=p.separator,
                options=p.options,
                phases=None,
            )  # fmt: skip
            for p in self.phases or ()
        ]

    def _check_tokenizer(self, kind) -> None:
        spm = self.tokenizer == "sentencepiece"
        require(not spm or not kind.generated, "tokenizer", "char for a generated task")
        if kind.generated or kind.ids is not None:
            pass  # their vocabulary is data.vocab_size (checked by the corpus)
        elif not spm:
            require(self.vocab_size is None, "vocab_size", "unset unless corpus is a task or "
                    "tokenizer is sentencepiece")  # fmt: skip
        elif self.tokenizer_path:
            require(self.vocab_size is None, "vocab_size", "unset with tokenizer_path (the "
                    "model has its own)")  # fmt: skip
            require(self.model_type is None, "model_type", "unset with tokenizer_path")
        else:
            require(self.vocab_size is not None, "vocab_size", "a vocabulary size for "
                    "tokenizer sentencepiece (or a trained model in tokenizer_path)")  # fmt: skip
            require(self.vocab_size >= 2, "vocab_size", f">= 2, got {self.vocab_size}")
            self.model_type = self.model_type or "unigram"
        if not spm:
            require(
                self.model_type is None, "model_type", "unset unless tokenizer is sentencepiece"
            )
            require(not self.tokenizer_path, "tokenizer_path", "unset unless tokenizer is "
                    "sentencepiece")  # fmt: skip


def check_fits(cfg: DataConfig, train_tokens: int, val_tokens: int) -> None:
    """Both splits (their lengths in tokens) fill `batch_size` streams of at least `seq_len`
    tokens, or one line naming the field; what `StreamBatcher` would refuse mid-trial."""
    unit = "characters" if cfg.tokenizer == "char" else "tokens"
    for where, n in (("training", train_tokens), ("held-out", val_tokens)):
        row_len = (n - 1) // cfg.batch_size
        if row_len < cfg.seq_len:
            raise DataError(
                f"data.seq_len: at most {max(row_len, 0)} so that the {where} split of corpus "
                f"{cfg.corpus} ({n} {unit}) fills {cfg.batch_size} streams, got {cfg.seq_len}"
            )


def corpus_kind(cfg: DataConfig) -> str:
    """What a run's data is, for the tracking store: a generated `task`, text corpora in
    `phases`, or one `text` corpus (reports read this instead of importing the data)."""
    if corpus_entry(cfg.corpus).generated:
        return "task"
    return "phases" if cfg.phases else "text"
