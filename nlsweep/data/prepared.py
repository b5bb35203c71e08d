"""Prepare once, map everywhere: a text corpus tokenized once into arrays in a
content-addressed cache, which every trial memory-maps instead of reading and tokenizing text.

    key        sha256 of (format, corpus, the source's digest, the tokenizer's settings, the
               shared tokenizer's identity for data.phases); the source's digest is its
               registered `digest(cfg)` when it has one (corpus `text`: the sha256 of every
               file, remembered per (size, mtime, inode) so an unchanged file is hashed once),
               else the sha256 of the splits its `texts` returns
    folder     $XDG_CACHE_HOME/nlsweep/prepared/<key>/ (NLSWEEP_PREPARED overrides the root:
               a folder on shared storage for a cluster)
    files      train.bin, val.bin (token ids, uint16 when the vocabulary fits, else uint32),
               val_bytes.bin, val_chars.bin (uint16 or uint32: the text each held-out token
               stands for), tokenizer.json (characters) or tokenizer.model (SentencePiece),
               index.json (sizes, dtypes, each file's sha256, the leakage alarm, the <unk> rate)
    written    into a temporary folder renamed into place once complete: a reader sees a whole
               cache entry or none. A reader trusts an entry only when every file matches the
               sha256 in its index; any other entry is moved aside and rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from nlsweep.data import streaming
from nlsweep.data.corpora import (
    DataError,
    cached_overlap,
    file_digest,
    load_texts,
    prepared_root,
    sha256_file,
)
from nlsweep.data.overlap import ID_SHINGLE, OverlapSketch
from nlsweep.data.registry import corpus_entry
from nlsweep.data.streaming import EmptySide, id_dtype, unit_dtype
from nlsweep.data.streams import Corpus, tokenize
from nlsweep.data.tokenizer import CharTokenizer, IdVocabulary, SentencePieceTokenizer

FORMAT = 1
ARRAYS = ("train", "val", "val_bytes", "val_chars")


def splits_digest(train, val) -> str:
    h = hashlib.sha256()
    for split in (train, val):
        docs = [split] if isinstance(split, str) else split
        h.update(f"{isinstance(split, str)}\0{len(docs)}\0".encode())
        for d in docs:
            h.update(f"{len(d)}\0".encode())
            h.update(d.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def tokenizer_identity(tok) -> str:
    if isinstance(tok, SentencePieceTokenizer):
        return f"sentencepiece:{tok.sha256}"
    chars = json.dumps(["".join(tok.chars), tok.eod])
    return f"char:{hashlib.sha256(chars.encode('utf-8', 'surrogatepass')).hexdigest()}"


def corpus_key(cfg, texts=None, tok=None) -> tuple[str, tuple | None]:
    """(the cache key of `cfg`'s prepared corpus, the splits if they had to be read)."""
    kind = corpus_entry(cfg.corpus)
    if kind.digest is not None and texts is None:
        source = kind.digest(cfg)
    else:
        texts = texts or load_texts(cfg)
        source = splits_digest(*texts)
    settings = {
        "format": FORMAT,
        "corpus": cfg.corpus,
        "source": source,
        "tokenizer": cfg.tokenizer,
        "vocab_size": cfg.vocab_size,
        "model_type": cfg.model_type,
        "tokenizer_path": file_digest(Path(cfg.tokenizer_path)) if cfg.tokenizer_path else "",
        "shared": tokenizer_identity(tok) if tok is not None else "",
    }
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return key, texts


def save_tokenizer(folder: Path, tok) -> str:
    """Write `tok` into `folder`; the file's name."""
    if isinstance(tok, SentencePieceTokenizer):
        name = "tokenizer.model"
        (folder / name).write_bytes(tok.model)
    elif isinstance(tok, IdVocabulary):
        name = "tokenizer.json"
        (folder / name).write_text(json.dumps({"ids": len(tok), "eod": tok.eod}))
    else:
        name = "tokenizer.json"
        spec = {"chars": "".join(tok.chars), "eod": tok.eod is not None}
        (folder / name).write_text(json.dumps(spec))
    return name


def read_tokenizer(folder: Path):
    """The tokenizer `save_tokenizer` wrote (OSError, ValueError or KeyError otherwise)."""
    if (folder / "tokenizer.model").is_file():
        return SentencePieceTokenizer((folder / "tokenizer.model").read_bytes())
    spec = json.loads((folder / "tokenizer.json").read_text())
    if "ids" in spec:
        return IdVocabulary(spec["ids"], spec["eod"])
    return CharTokenizer(spec["chars"], eod=spec["eod"])


def _finish(folder: Path, index: dict, tok) -> None:
    """The tokenizer's file and the index, with every file's sha256, written last."""
    for name in ARRAYS:
        if (folder / f"{name}.bin").exists():  # (pre-tokenized ids have no units)
            meta = index["files"].setdefault(f"{name}.bin", {})
            meta["sha256"] = sha256_file(folder / f"{name}.bin")
    name = save_tokenizer(folder, tok)
    index["files"][name] = {"sha256": sha256_file(folder / name)}
    (folder / "index.json").write_text(json.dumps(index, indent=1))


def _write_stream(folder: Path, cfg, kind, tok, out) -> bool:
    """Prepare a document source in two streaming passes (`streaming.py`); False when its
    digest split leaves a side empty (it is then prepared in memory)."""
    try:
        got = streaming.prepare_stream(folder, cfg, lambda: kind.stream(cfg), tok, out)
    except EmptySide:
        return False
    tok = got["tokenizer"]
    files = {}
    for name in ARRAYS:
        dtype = got["dtypes"][name]
        n = (folder / f"{name}.bin").stat().st_size // dtype.itemsize
        files[f"{name}.bin"] = {"dtype": dtype.name, "n": n}
    index = {"format": FORMAT, "vocab": len(tok), "files": files,
             "val_overlap": got["val_overlap"], "val_unk_rate": got["val_unk_rate"]}  # fmt: skip
    _finish(folder, index, tok)
    return True


def _write_ids(folder: Path, kind, cfg, out) -> None:
    """Prepare a pre-tokenized corpus: its ids written block by block (each checked against
    the vocabulary), the leakage measured over id shingles."""
    splits = kind.ids(cfg)
    vocab = splits.vocab_size
    dtype = id_dtype(vocab)
    sketch = OverlapSketch(None, k=ID_SHINGLE)  # held-out first, then training streams by
    files = {}
    for name, blocks, feed in (("val", splits.val, sketch.add_heldout),
                               ("train", splits.train, sketch.add_training)):  # fmt: skip
        n = 0
        progress = streaming.Progress(out, f"{name} ids")
        with open(folder / f"{name}.bin", "wb") as f:
            for block in blocks():
                block = np.asarray(block)
                if len(block) and (int(block.min()) < 0 or int(block.max()) >= vocab):
                    raise DataError(f"{splits.where}: an id outside [0, {vocab}) in the "
                                    f"{name} split; expected ids below vocab_size")  # fmt: skip
                block.astype(dtype).tofile(f)
                feed(block)
                n += len(block)
                progress.add(0, len(block))
        if not n:
            raise DataError(f"{splits.where}: the {name} split holds no ids")
        files[f"{name}.bin"] = {"dtype": dtype.name, "n": n}
    index = {"format": FORMAT, "vocab": vocab, "files": files,
             "val_overlap": sketch.estimate().value, "val_unk_rate": 0.0}  # fmt: skip
    _finish(folder, index, IdVocabulary(vocab, splits.eod))


def _write(folder: Path, cfg, texts, tok) -> None:
    train, val = texts
    tok, train_ids, val_ids, units = tokenize(cfg, train, val, tok)
    ids = id_dtype(len(tok))
    arrays = {"train": train_ids, "val": val_ids, "val_bytes": units["bytes"],
              "val_chars": units["chars"]}  # fmt: skip
    index = {"format": FORMAT, "vocab": len(tok), "files": {}}
    for name, t in arrays.items():
        a = t.numpy()
        dtype = ids if name in ("train", "val") else unit_dtype(int(a.max(initial=0)))
        a.astype(dtype).tofile(folder / f"{name}.bin")
        index["files"][f"{name}.bin"] = {"dtype": dtype.name, "n": len(a)}
    index["val_overlap"] = cached_overlap(train, val)
    index["val_unk_rate"] = float((val_ids == 0).float().mean())
    _finish(folder, index, tok)


def _read(folder: Path, shared=None, verify: bool = True) -> Corpus:
    """The corpus of a complete cache entry, every file checked against its sha256 (only
    its size when not `verify`), with the `shared` tokenizer its key names when given;
    ValueError for anything else."""
    try:
        index = json.loads((folder / "index.json").read_text())
        files = index["files"]
        for name, meta in files.items():
            if not verify and "n" in meta:
                size = meta["n"] * np.dtype(meta["dtype"]).itemsize
                if (folder / name).stat().st_size != size:
                    raise ValueError(f"{name} is not {size} bytes long")
            elif sha256_file(folder / name) != meta["sha256"]:
                raise ValueError(f"{name} does not match its sha256")
        tok = shared if shared is not None else read_tokenizer(folder)
        if len(tok) != index["vocab"]:
            raise ValueError("the tokenizer does not match the index")
        maps = {}
        for name in ARRAYS:
            if name not in ("train", "val") and f"{name}.bin" not in files:
                continue  # pre-tokenized ids stand for no known text
            meta = files[f"{name}.bin"]
            # copy-on-write: pages are shared between processes, and torch gets a
            # writable buffer (nothing writes to it)
            a = np.memmap(folder / f"{name}.bin", dtype=meta["dtype"], mode="c",
                          shape=(meta["n"],))  # fmt: skip
            maps[name] = torch.from_numpy(a)
    except (OSError, KeyError, TypeError, json.JSONDecodeError, RuntimeError) as e:
        raise ValueError(f"{type(e).__name__}: {e}") from None
    return Corpus(
        vocab=tok,
        train=maps["train"],
        val=maps["val"],
        val_overlap=float(index["val_overlap"]),
        val_unk_rate=float(index["val_unk_rate"]),
        val_units={u: maps[f"val_{u}"] for u in ("bytes", "chars") if f"val_{u}" in maps},
        prepared=str(folder),
    )


def prepared_corpus(cfg, texts=None, tok=None, out=None, verify: bool = True) -> Corpus:
    """The text corpus of `cfg`, memory-mapped from the cache, prepared there first if it is
    not (from `texts`, else its registered source; tokenised by `tok`, else by a tokenizer of
    its training split). An existing entry is checked against its sha256 digests, or, when
    not `verify` (a trial, after the sweep's preflight verified it), against its sizes.
    `out(line)` hears what was done."""
    key, texts = corpus_key(cfg, texts, tok)
    folder = prepared_root() / key
    if folder.is_dir():
        try:
            return _read(folder, tok, verify)
        except ValueError as e:
            aside = folder.with_name(f"{key}.bad-{os.getpid()}")
            if out:
                out(f"prepared corpus {folder} is unusable ({e}): rebuilding it")
            try:
                folder.rename(aside)
                shutil.rmtree(aside, ignore_errors=True)
            except OSError:
                pass
    kind = corpus_entry(cfg.corpus)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{key}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        # A document source streams (bounded memory); splits already read are tokenized
        # as they are.
        if kind.ids is not None:
            _write_ids(tmp, kind, cfg, out)
        elif (
            texts is not None or kind.stream is None or not _write_stream(tmp, cfg, kind, tok, out)
        ):
            _write(tmp, cfg, texts or load_texts(cfg), tok)
        with contextlib.suppress(OSError):  # another process finished the same entry first
            tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if out:
        out(f"prepared corpus {cfg.corpus} in {folder}")
    return _read(folder, tok, verify=False)  # its digests were just taken from what was written


def text_corpus(cfg, train, val, tok=None) -> Corpus:
    """The prepared corpus of two given splits (tokenised by `tok`, else by a tokenizer of
    the training split)."""
    return prepared_corpus(cfg, (train, val), tok)
