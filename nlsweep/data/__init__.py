"""A trial's data: corpora and their files, held-out splits, tokenizers, generated tasks,
phases for continual learning, and contiguous-stream batching. Owns `DataConfig`."""

from nlsweep.data.config import TEXT_CORPORA, DataConfig, PhaseConfig, check_fits, corpus_kind
from nlsweep.data.corpora import DataError, load_texts, resolve_files
from nlsweep.data.load import load_corpus
from nlsweep.data.phases import PhasedBatcher, PhasedCorpus
from nlsweep.data.streams import Corpus, StreamBatcher, build_tokenizer, text_corpus, tokenize
from nlsweep.data.tasks import TASKS, TaskCorpus
from nlsweep.data.tokenizer import CharTokenizer, SentencePieceTokenizer, TokenizerError

__all__ = [
    "TASKS", "TEXT_CORPORA", "CharTokenizer", "Corpus", "DataConfig", "DataError",
    "PhaseConfig", "PhasedBatcher", "PhasedCorpus", "SentencePieceTokenizer", "StreamBatcher",
    "TaskCorpus", "TokenizerError", "build_tokenizer", "check_fits", "corpus_kind",
    "load_corpus", "load_texts", "resolve_files", "text_corpus", "tokenize",
]  # fmt: skip
