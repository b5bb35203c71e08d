"""A trial's data: the registry of corpora (text and generated tasks) with the built-ins,
their files and held-out splits, tokenizers, phases for continual learning, and
contiguous-stream batching. Owns `DataConfig`."""

from nlsweep.data import kinds  # noqa: F401 - registers the built-in corpora
from nlsweep.data.config import DataConfig, PhaseConfig, check_fits, corpus_kind
from nlsweep.data.corpora import DataError, load_texts, resolve_files
from nlsweep.data.load import load_corpus
from nlsweep.data.phases import PhasedBatcher, PhasedCorpus
from nlsweep.data.prepared import prepared_corpus, text_corpus
from nlsweep.data.registry import CorpusKind, corpus_entry, corpus_names, register_corpus
from nlsweep.data.streams import Corpus, StreamBatcher, build_tokenizer, tokenize
from nlsweep.data.tasks import TaskCorpus
from nlsweep.data.tokenizer import CharTokenizer, SentencePieceTokenizer, TokenizerError

__all__ = [
    "CharTokenizer", "Corpus", "CorpusKind", "DataConfig", "DataError", "PhaseConfig",
    "PhasedBatcher", "PhasedCorpus", "SentencePieceTokenizer", "StreamBatcher", "TaskCorpus",
    "TokenizerError", "build_tokenizer", "check_fits", "corpus_entry", "corpus_kind",
    "corpus_names", "load_corpus", "load_texts", "prepared_corpus", "register_corpus",
    "resolve_files", "text_corpus", "tokenize",
]  # fmt: skip
