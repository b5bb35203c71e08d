"""Tokenizers of text corpora: the characters of the training split, or a SentencePiece model
trained on the training split alone. Either one says, for every token it emits, how many
UTF-8 bytes of the text it stands for, so held-out loss can be put per byte (`val/bpb`) and a
char run and a subword run, or two vocabulary sizes, compare on one scale.

Id 0 is <unk> in both: a character outside the training split (char), or text the subword
model cannot cover (sentencepiece, trained with character_coverage 1.0, so only characters
the training split never had). An <unk> token still counts the bytes it replaced.

SentencePiece is trained deterministically (one thread, every training line, no sampling),
with the identity normalisation and no dummy prefix, so that the pieces spell the text
exactly and a token's bytes are its piece's bytes; newlines, which a line-by-line trainer
never sees, are a piece of their own. A trained model is cached under the sha256 of the
training text and the settings, so every trial of a sweep (and a resumed one) loads the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import torch


class TokenizerError(RuntimeError):
    """A tokenizer that cannot be trained or loaded; the message is one line naming the field."""


def utf8_lengths(text: str) -> np.ndarray:
    """Bytes each character of `text` takes in UTF-8."""
    cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return 1 + (cp >= 0x80) + (cp >= 0x800) + (cp >= 0x10000)


class CharTokenizer:
    """Characters of the training split; id 0 stands for any character outside it."""

    kind = "char"

    def __init__(self, train_text: str):
        self.chars = sorted(set(train_text))
        self.index = {c: i + 1 for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> torch.Tensor:
        get = self.index.get
        return torch.tensor([get(c, 0) for c in text], dtype=torch.long)

    def encode_with_units(self, text: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(token ids, {"bytes": UTF-8 bytes of each token's text, "chars": its characters})."""
        ids = self.encode(text)
        nbytes = torch.from_numpy(utf8_lengths(text).astype(np.int64))
        return ids, {"bytes": nbytes, "chars": torch.ones_like(ids)}

    def decode(self, ids) -> str:
        return "".join(self.chars[i - 1] if i > 0 else "\ufffd" for i in ids)


def model_key(train_text: str, settings: dict) -> str:
    h = hashlib.sha256(train_text.encode("utf-8"))
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


class SentencePieceTokenizer:
    """A SentencePiece model (unigram or BPE) over the training split."""

    kind = "sentencepiece"

    def __init__(self, model: bytes):
        import sentencepiece as spm

        self.model = model
        self.sp = spm.SentencePieceProcessor(model_proto=model)
        sp = self.sp
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


def train_sentencepiece(train_text: str, vocab_size: int, model_type: str) -> bytes:
    """A deterministic SentencePiece model of `train_text`, or one TokenizerError line."""
    import io

    import sentencepiece as spm

    lines = [line for line in train_text.split("\n") if line.strip()]
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
            eos_id=-1,
            pad_id=-1,
            num_threads=1,
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
    train_text: str, vocab_size: int, model_type: str, cache: Path
) -> SentencePieceTokenizer:
    """The model for (training text, settings): read from `cache`, else trained and stored
    there atomically (concurrent trials that both train write identical bytes)."""
    settings = {"vocab_size": vocab_size, "model_type": model_type, "format": 1}
    path = cache / "tokenizers" / f"{model_key(train_text, settings)}.model"
    try:
        return SentencePieceTokenizer(path.read_bytes())
    except (OSError, RuntimeError):
        pass
    model = train_sentencepiece(train_text, vocab_size, model_type)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
        tmp.write_bytes(model)
        tmp.replace(path)
    except OSError:
        pass  # a read-only cache only costs training it again
    return SentencePieceTokenizer(model)


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
