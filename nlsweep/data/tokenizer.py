"""Tokenizers of text corpora: the characters of the training split, or a SentencePiece model
trained on the training split alone. Either one says, for every token it emits, how many
UTF-8 bytes of the text it stands for, so held-out loss can be put per byte (`val/bpb`) and a
char run and a subword run, or two vocabulary sizes, compare on one scale.

Id 0 is <unk> in both: a character outside the training split (char), or text the subword
model cannot cover (sentencepiece, trained with character_coverage 1.0, so only characters
the training split never had). An <unk> token still counts the bytes it replaced.
When a split is documents, id 1 is reserved in both (the char vocabulary starts at 2;
SentencePiece's eos) and follows every document: the end-of-document token, which stands
for no bytes of text.

SentencePiece is trained deterministically (one thread, every training line, no sampling),
with the identity normalisation and no dummy prefix, so that the pieces spell the text
exactly and a token's bytes are its piece's bytes; newlines, which a line-by-line trainer
never sees, are a piece of their own. A trained model is cached under the sha256 of the
training text and the settings, so every trial of a sweep (and a resumed one) loads the same.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import torch

from nlsweep.data.corpora import store_quietly

SPM_THREADS = 8
"""SentencePiece threads for a streamed corpus's model (`streaming.py`): a fixed count, since
the model differs between counts (measured: 1, 2 and 4 threads give three models, 4 threads
the same one three times)."""


class TokenizerError(RuntimeError):
    """A tokenizer that cannot be trained or loaded; the message is one line naming the field."""


def utf8_lengths(text: str) -> np.ndarray:
    """Bytes each character of `text` takes in UTF-8."""
    cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return 1 + (cp >= 0x80) + (cp >= 0x800) + (cp >= 0x10000)


def documents_of(split) -> list[str]:
    """A split's text in documents: a list as it is, one string as one document."""
    return [split] if isinstance(split, str) else list(split)


class _Splits:
    """Encoding of a split, one string or a list of documents; the tokenizer's `eod` id
    follows each document (a split of documents needs a tokenizer that reserves it)."""

    eod: int | None

    def _documents(self, split) -> list[str]:
        if isinstance(split, str):
            return [split]
        if self.eod is None:
            raise TokenizerError(
                "data.tokenizer: this split is documents, and the tokenizer reserves no "
                "end-of-document id (build it with eod=True)"
            )
        return split

    def encode_split(self, split) -> torch.Tensor:
        docs = self._documents(split)
        if isinstance(split, str):
            return self.encode(split)
        eod = torch.tensor([self.eod], dtype=torch.long)
        return torch.cat([t for d in docs for t in (self.encode(d), eod)])

    def encode_split_with_units(self, split) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`encode_with_units` of a split; an end-of-document token stands for no text (0
        bytes, 0 characters), so its loss counts in val/bpb over the documents' bytes."""
        docs = self._documents(split)
        if isinstance(split, str):
            return self.encode_with_units(split)
        ids, units = [], {"bytes": [], "chars": []}
        zero = torch.zeros(1, dtype=torch.long)
        for d in docs:
            i, u = self.encode_with_units(d)
            ids += [i, torch.tensor([self.eod], dtype=torch.long)]
            for k in units:
                units[k] += [u[k], zero]
        return torch.cat(ids), {k: torch.cat(v) for k, v in units.items()}


class CharTokenizer(_Splits):
    """Characters of the training split; id 0 stands for any character outside it, and id
    1, when `eod`, ends a document."""

    kind = "char"

    def __init__(self, train, eod: bool = False):
        chars: set[str] = set()
        for doc in documents_of(train):
            chars.update(doc)
        self.chars = sorted(chars)  # code point order
        self.eod = 1 if eod else None
        self.first = 2 if eod else 1
        self.index = {c: i + self.first for i, c in enumerate(self.chars)}
        self._points = np.array([ord(c) for c in self.chars], dtype=np.int64)
        # ids of the Basic Multilingual Plane by table lookup; the rest by sorted search
        self._table = np.zeros(1 << 16, dtype=np.int64)
        bmp = self._points < 1 << 16
        self._table[self._points[bmp]] = np.flatnonzero(bmp) + self.first

    def __len__(self) -> int:
        return len(self.chars) + self.first

    def encode(self, text: str) -> torch.Tensor:
        # A sorted search over the vocabulary's code points: the same ids as a dict lookup
        # per character, at numpy speed.
        cp = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        if not len(cp) or int(cp.max()) < 1 << 16:
            return torch.from_numpy(self._table[cp])
        cp = cp.astype(np.int64)
        at = np.searchsorted(self._points, cp)
        at_c = np.minimum(at, max(len(self._points) - 1, 0))
        known = (self._points[at_c] == cp) if len(self._points) else np.zeros(len(cp), bool)
        return torch.from_numpy(np.where(known, at + self.first, 0))

    def encode_with_units(self, text: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(token ids, {"bytes": UTF-8 bytes of each token's text, "chars": its characters})."""
        ids = self.encode(text)
        nbytes = torch.from_numpy(utf8_lengths(text).astype(np.int64))
        return ids, {"bytes": nbytes, "chars": torch.ones_like(ids)}

    def decode(self, ids) -> str:
        def one(i: int) -> str:
            if i == self.eod:
                return "\n"
            return self.chars[i - self.first] if i >= self.first else "\ufffd"

        return "".join(one(int(i)) for i in ids)


class IdVocabulary:
    """The vocabulary of pre-tokenized ids (corpus `tokens`): `size` ids made by a tokenizer
    nlsweep never sees, `eod` the one ending each document (None: no documents)."""

    kind = "ids"

    def __init__(self, size: int, eod: int | None = None):
        self.size, self.eod = size, eod

    def __len__(self) -> int:
        return self.size


def model_key(train, settings: dict) -> str:
    h = hashlib.sha256()
    if isinstance(train, str):
        h.update(train.encode("utf-8"))
    else:
        for doc in train:  # a document's length first: no two lists hash alike
            h.update(f"{len(doc)}\0{doc}".encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


class SentencePieceTokenizer(_Splits):
    """A SentencePiece model (unigram or BPE) over the training split; its eos id, when the
    model has one, ends a document."""

    kind = "sentencepiece"

    def __init__(self, model: bytes):
        import sentencepiece as spm

        self.model = model
        self.sp = spm.SentencePieceProcessor(model_proto=model)
        sp = self.sp
        self.eod = sp.eos_id() if sp.eos_id() >= 0 else None
        # A piece's bytes: its text with the whitespace marker read as the space it escapes.
        texts = [
            "" if sp.is_unknown(i) or sp.is_control(i) else sp.id_to_piece(i).replace("\u2581", " ")
            for i in range(sp.get_piece_size())
        ]
        self.piece_bytes = np.array([len(t.encode("utf-8")) for t in texts], dtype=np.int64)
        self.piece_chars = np.array([len(t) for t in texts], dtype=np.int64)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.model).hexdigest()

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def encode_with_units(self, text: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(token ids, {"bytes": UTF-8 bytes of each token's text, "chars": its characters});
        an <unk> counts the text it stands for."""
        proto = self.sp.encode(text, out_type="proto")
        ids = np.fromiter((p.id for p in proto.pieces), dtype=np.int64)
        nbytes, nchars = self.piece_bytes[ids], self.piece_chars[ids]
        unk = np.flatnonzero(ids == self.sp.unk_id())
        if len(unk):
            # Offsets are into the input's bytes (the identity normalisation keeps them so).
            raw = text.encode("utf-8")
            spans = [raw[proto.pieces[i].begin : proto.pieces[i].end] for i in unk]
            nbytes[unk] = [len(b) for b in spans]
            nchars[unk] = [len(b.decode("utf-8", "replace")) for b in spans]
        total = len(text.encode("utf-8"))
        if int(nbytes.sum()) != total:
            raise TokenizerError(
                f"data.tokenizer: the SentencePiece model does not spell the text exactly "
                f"({int(nbytes.sum())} bytes in its pieces, {total} in the text); train it with "
                "normalization_rule_name identity and add_dummy_prefix false"
            )
        units = {"bytes": torch.from_numpy(nbytes), "chars": torch.from_numpy(nchars)}
        return torch.from_numpy(ids), units

    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor(self.sp.encode(text), dtype=torch.long)

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids])


def train_sentencepiece(train, vocab_size: int, model_type: str, eod: bool = False) -> bytes:
    """A deterministic SentencePiece model of the training split `train` (a string or its
    documents; with `eod`, id 1 is reserved as end of document), or one TokenizerError line."""
    lines = [ln for doc in documents_of(train) for ln in doc.split("\n") if ln.strip()]
    return train_sentencepiece_lines(lines, vocab_size, model_type, eod)


def train_sentencepiece_lines(lines: list[str], vocab_size: int, model_type: str,
                              eod: bool = False, threads: int = 1) -> bytes:  # fmt: skip
    """`train_sentencepiece` of the training split's non-empty lines, in their order, on
    `threads` of SentencePiece's own threads."""
    import io

    import sentencepiece as spm

    if not lines:
        raise TokenizerError("data.tokenizer: the training split has no text to train on")
    out = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=out,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=1.0,
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            user_defined_symbols=["\n"],
            unk_id=0,
            bos_id=-1,
            eos_id=1 if eod else -1,
            pad_id=-1,
            # A model depends on the thread count (not on the cores it runs on): fixed
            # counts keep it the same on every machine.
            num_threads=threads,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            hard_vocab_limit=True,
            minloglevel=2,
        )
    except RuntimeError as e:
        why = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        most = re.search(r"<= (\d+)", why)
        if "Vocabulary size" in why and most:
            raise TokenizerError(
                f"data.vocab_size: at most {most.group(1)} for a {model_type} model of this "
                f"training split, got {vocab_size}"
            ) from None
        raise TokenizerError(f"data.tokenizer: SentencePiece could not train ({why})") from None
    return out.getvalue()


def cached_sentencepiece(
    train, vocab_size: int, model_type: str, cache: Path, eod: bool = False
) -> SentencePieceTokenizer:
    """The model for (training split, settings): read from `cache`, else trained and stored
    there atomically (concurrent trials that both train write identical bytes)."""
    settings = {"vocab_size": vocab_size, "model_type": model_type, "format": 1}
    if eod:
        settings["eod"] = True
    path = cache / "tokenizers" / f"{model_key(train, settings)}.model"
    return _cached_model(path, lambda: train_sentencepiece(train, vocab_size, model_type, eod))


def _cached_model(path: Path, train) -> SentencePieceTokenizer:
    """The model stored at `path`, else `train()`'s, stored there atomically."""
    try:
        return SentencePieceTokenizer(path.read_bytes())
    except (OSError, RuntimeError):
        pass
    model = train()
    store_quietly(path, model)  # a read-only cache only costs training it again
    return SentencePieceTokenizer(model)


def cached_sentencepiece_lines(
    lines: list[str], vocab_size: int, model_type: str, cache: Path
) -> SentencePieceTokenizer:
    """`cached_sentencepiece` of a document corpus given as its training lines (a sample of
    them, for a corpus too large to hold): the end-of-document id reserved."""
    settings = {"vocab_size": vocab_size, "model_type": model_type, "format": 1, "eod": True,
                "lines": True, "threads": SPM_THREADS}  # fmt: skip
    path = cache / "tokenizers" / f"{model_key(lines, settings)}.model"
    return _cached_model(
        path,
        lambda: train_sentencepiece_lines(lines, vocab_size, model_type, True, SPM_THREADS),
    )


def load_sentencepiece(path: str) -> SentencePieceTokenizer:
    try:
        model = Path(path).read_bytes()
    except OSError as e:
        raise TokenizerError(
            f"data.tokenizer_path: {path} is unreadable ({e.strerror or e})"
        ) from None
    try:
        return SentencePieceTokenizer(model)
    except RuntimeError:
        raise TokenizerError(f"data.tokenizer_path: {path} is not a SentencePiece model") from None
