"""`data:`, the typed config of a trial's data: which corpus (a text file, a generated task,
or several text corpora in phases), its files and held-out split, its tokenizer, and the batch
shape; each field checked on its own and against the others, each error naming its key.

Corpora (`data.corpus`):
    pydoc            the documentation topics bundled with CPython (`pydoc_data.topics`):
                     needs no download; the quickstart's corpus
    tinyshakespeare  input.txt; first (1 - val_fraction) trains, the rest is held out
    wikitext2        valid.txt trains and test.txt is held out (the word-tokenised WikiText-2
                     splits used as a second text domain, not the WikiText-2 benchmark)
    text             any UTF-8 file given by data.path, split like tinyshakespeare
    mqar, passkey    generated memory tasks (`tasks.py`)
    phases           several text corpora in order, one vocabulary (`phases.py`)
Where the files come from: `corpora.py`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Literal

from models.errors import require
from nlsweep.data.corpora import DataError
from nlsweep.data.tasks import TASKS

TEXT_CORPORA = ("pydoc", "tinyshakespeare", "wikitext2", "text")
PHASE_NAME = re.compile(r"[A-Za-z0-9_]{1,40}")


def _check_split(cfg) -> None:
    """The rules of a text corpus's files and split, for `data:` and each of its phases."""
    require(cfg.corpus != "text" or cfg.path, "path", "a text file path for corpus: text")
    if cfg.val_fraction is not None:
        require(
            0 < cfg.val_fraction < 1,
            "val_fraction",
            f"a fraction in (0, 1), got {cfg.val_fraction}",
        )
        require(
            cfg.corpus != "wikitext2",
            "val_fraction",
            "unset for wikitext2 (its held-out split is test.txt)",
        )


@dataclass
class PhaseConfig:
    """One entry of `data.phases`: a text corpus trained on for `steps` steps."""

    corpus: Literal["pydoc", "tinyshakespeare", "wikitext2", "text"] | None = None
    """The phase's text corpus (its splits as for `data.corpus`)."""
    steps: int = 0
    """Training steps on this corpus; a multiple of train.eval_every, so that an evaluation
    ends the phase."""
    path: str = ""
    """As `data.path`, for this phase's corpus."""
    val_fraction: float | None = None
    """As `data.val_fraction`, for this phase's corpus."""
    name: str = ""
    """The phase in metric names (`val/<name>/bpb`); default the corpus."""

    def __post_init__(self):
        require(self.corpus is not None, "corpus", f"one of {', '.join(TEXT_CORPORA)}")
        require(self.steps >= 1, "steps", f"a positive number of steps, got {self.steps}")
        _check_split(self)
        self.name = self.name or self.corpus
        require(
            PHASE_NAME.fullmatch(self.name),
            "name",
            f"1-40 letters, digits or _ (it names metrics: val/<name>/bpb), got {self.name!r}",
        )


@dataclass
class DataConfig:
    """`data:` section."""

    corpus: (
        Literal["pydoc", "tinyshakespeare", "wikitext2", "text", "mqar", "passkey", "phases"] | None
    ) = None
    """A text corpus, a synthetic memory task (`nlsweep/data/tasks.py`), or `phases` (the default
    when `phases` is set; otherwise the default is pydoc)."""
    phases: list[PhaseConfig] | None = None
    """Continual learning (`nlsweep/data/phases.py`): text corpora trained on one after another,
    with one vocabulary learnt from all their training splits; every evaluation scores the
    held-out split of each phase trained so far and of the next. Replaces corpus, path and
    val_fraction, which each phase sets."""
    path: str = ""
    """Folder holding the corpus files (a file for `text`); empty = NLSWEEP_DATA / cache."""
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

    def __post_init__(self):
        self._check_phases()
        task_fields = {
            "mqar": ("num_kv_pairs",),
            "passkey": ("key_len", "eval_lengths", "eval_segment"),
        }
        for task, fields in task_fields.items():
            for key in fields if self.corpus != task else ():
                require(getattr(self, key) is None, key, f"unset unless corpus is {task}")
        if self.corpus == "passkey":
            self.vocab_size = 32 if self.vocab_size is None else self.vocab_size
            self.key_len = 4 if self.key_len is None else self.key_len
            require(self.key_len >= 1, "key_len", f">= 1, got {self.key_len}")
            require(
                self.vocab_size >= 14, "vocab_size", f">= 14 for passkey, got {self.vocab_size}"
            )
            if self.eval_segment is not None:
                require(self.eval_lengths, "eval_segment", "set with eval_lengths")
                require(self.eval_segment >= 1, "eval_segment", f">= 1, got {self.eval_segment}")
            shortest = 2 * self.key_len + 3
            for n in [self.seq_len, *(self.eval_lengths or [])]:
                require(
                    n >= shortest,
                    "seq_len" if n == self.seq_len else "eval_lengths",
                    f"at least 2 x key_len + 3 = {shortest} tokens, got {n}",
                )
        if self.corpus == "mqar":
            self.vocab_size = 64 if self.vocab_size is None else self.vocab_size
            self.num_kv_pairs = 8 if self.num_kv_pairs is None else self.num_kv_pairs
            require(self.num_kv_pairs >= 1, "num_kv_pairs", f">= 1, got {self.num_kv_pairs}")
            require(
                (self.vocab_size - 1) // 2 >= self.num_kv_pairs,
                "vocab_size",
                f"at least {2 * self.num_kv_pairs + 1} for {self.num_kv_pairs} distinct keys, "
                f"got {self.vocab_size}",
            )
            require(
                self.seq_len >= 4 * self.num_kv_pairs,
                "seq_len",
                f"at least 4 x num_kv_pairs = {4 * self.num_kv_pairs}, got {self.seq_len}",
            )
        if self.corpus in TASKS:
            require(not self.path, "path", "unset for a generated task")
            require(self.task_seed >= 0, "task_seed", f">= 0, got {self.task_seed}")
        else:
            require(self.task_seed == 0, "task_seed", "unset unless corpus is mqar or passkey")
        self._check_tokenizer()
        require(self.seq_len >= 1, "seq_len", f"a positive integer, got {self.seq_len}")
        require(self.batch_size >= 1, "batch_size", f"a positive integer, got {self.batch_size}")
        _check_split(self)

    def _check_phases(self) -> None:
        if self.phases is None:
            require(self.corpus != "phases", "phases", "a list of phases for corpus: phases")
            self.corpus = self.corpus or "pydoc"
            return
        where = "unset with phases (each phase sets its own)"
        require(self.corpus in (None, "phases"), "corpus", where)
        require(not self.path, "path", where)
        require(self.val_fraction is None, "val_fraction", where)
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
                self, corpus=p.corpus, path=p.path, val_fraction=p.val_fraction, phases=None
            )
            for p in self.phases or ()
        ]

    def _check_tokenizer(self) -> None:
        spm = self.tokenizer == "sentencepiece"
        require(not spm or self.corpus not in TASKS, "tokenizer", "char for a generated task")
        if self.corpus in TASKS:
            pass
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
    if cfg.corpus in TASKS:
        return "task"
    return "phases" if cfg.phases else "text"
