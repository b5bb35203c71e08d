"""The files behind `data.path` (corpus `text`), read as documents, and the held-out split
made of whole documents.

    path        a file, a folder (every readable file under it, recursively, in name order,
                hidden ones skipped) or a glob (`corpus/*.jsonl`, `**` recursive)
    formats     by the name's suffix: .jsonl (one JSON object a line), .parquet (a column),
                .gz (gzip of the format its stem names: x.jsonl.gz, x.txt.gz), anything else
                UTF-8 text; a Hugging Face `datasets` folder (`save_to_disk`), or instead
                of a path `data.dataset` (`datasets.load_dataset`): `hub.py`
    document    a jsonl line or a parquet / datasets row (its `data.text_field`, default
                `text`), a text file, or a piece of one between `data.separator`s; empty
                documents are dropped
    split       u(d) = first 8 bytes of sha256(d's UTF-8) / 2^64; d is held out iff
                u(d) < val_fraction (default 0.1). The split depends on a document's text
                only, never on file order, and exact duplicates never straddle it. Should it
                leave a side empty, the document of smallest (largest) u moves across.
                A source of one document has its last val_fraction held out instead, cut
                at the line boundary nearest the cut (mid-line only if it has none).

A document is never trained on as something else: a jsonl line that is not JSON, a row
without the text field, a text field that is not a string, an unreadable gzip, a
pre-tokenized array: each is one line naming the file (and line or row) and what was
expected.
"""

from __future__ import annotations

import codecs
import dataclasses
import glob
import gzip
import hashlib
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

from models.errors import ConfigError
from nlsweep.data import hub
from nlsweep.data.corpora import (
    DataError,
    check_tail_split,
    decode_text,
    file_digest,
    heldout_fraction,
)
from nlsweep.data.mixture import MIXTURE_SEED, mixed_stream, mixed_texts

DEFAULT_FIELD = "text"
STRUCTURED = (".jsonl", ".parquet")
PRETOKENIZED = (".npy", ".bin", ".npz", ".pt", ".arrow")
TEXT = (".txt", ".text", ".md", ".rst", ".tokens", ".raw")
READABLE = (*TEXT, *STRUCTURED, ".gz")
"""What a folder's walk picks up (a file named directly, or by a glob, is read as text
whatever its suffix)."""
GLOB_CHARS = set("*?[")
BLOCK = 1 << 22  # bytes read at a time from a separated text file


def _format(path: Path) -> tuple[str, bool]:
    """(format, gzipped): .jsonl, .parquet, a pre-tokenized suffix, or text."""
    suffixes = [""] * 2 + [s.lower() for s in path.suffixes]
    gz = suffixes[-1] == ".gz"
    inner = suffixes[-2] if gz else suffixes[-1]
    return inner if inner in (*STRUCTURED, *PRETOKENIZED) else "text", gz


def resolve(path: str) -> list[Path]:
    """The files (or the one datasets folder) that `data.path` names, in a fixed order;
    one line for a missing path, an empty glob or a folder with nothing readable."""
    if not path:
        raise DataError("data.path: a file, folder or glob for corpus text")
    if GLOB_CHARS & set(path):
        found = sorted(Path(p) for p in glob.glob(path, recursive=True) if Path(p).is_file())
        if not found:
            raise DataError(f"data.path: no files match {path}")
        return found
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.exists():
        raise DataError(f"data.path: {p} does not exist; expected a file, folder or glob")
    if not p.is_dir():
        raise DataError(f"data.path: {p} is neither a regular file nor a folder (a FIFO, "
                        "device or socket); expected a file, folder or glob")  # fmt: skip
    if hub.is_saved_dataset(p):
        return [p]
    found = sorted(
        f for f in p.rglob("*")
        if f.is_file() and f.name.lower().endswith(READABLE)
        and not any(part.startswith(".") for part in f.relative_to(p).parts)
    )  # fmt: skip
    if not found:
        raise DataError(f"data.path: {p} has no readable files (expected names ending in "
                        f"{', '.join(READABLE)})")  # fmt: skip
    return found


def _raw(path: Path, gz: bool) -> bytes:
    try:
        if gz:
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        what = "gzip" if gz else "file"
        raise DataError(f"{path}: unreadable {what} ({getattr(e, 'strerror', None) or e})") \
            from None  # fmt: skip


def _jsonl(path: Path, gz: bool, field: str) -> Iterator[str]:
    opener = gzip.open if gz else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{line_no}: not a JSON object ({e.msg}); a .jsonl "
                                    "file holds one object a line") from None  # fmt: skip
                yield _field(row, field, f"{path}:{line_no}")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        what = "not UTF-8" if isinstance(e, UnicodeDecodeError) else "unreadable"
        raise DataError(f"{path}: {what} ({getattr(e, 'strerror', None) or e})") from None


def _field(row, field: str, where: str) -> str:
    if not isinstance(row, dict) or field not in row:
        keys = ", ".join(map(str, row)) if isinstance(row, dict) else type(row).__name__
        raise DataError(f"{where}: no field '{field}' (it has: {keys[:200]}); set "
                        "data.text_field to the field holding the text")  # fmt: skip
    text = row[field]
    if text is None:
        return ""
    if not isinstance(text, str):
        raise DataError(f"{where}: field '{field}' is {type(text).__name__}, expected a string "
                        "of text")  # fmt: skip
    return text


def _parquet(path: Path, field: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: not a readable parquet file ({str(e).splitlines()[0]})") \
            from None  # fmt: skip
    schema = pf.schema_arrow
    if field not in schema.names:
        raise DataError(f"{path}: no column '{field}' (it has: {', '.join(schema.names)[:200]}); "
                        "set data.text_field to the column holding the text")  # fmt: skip
    kind = schema.field(field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataError(f"{path}: column '{field}' is {kind}, expected strings of text")
    for batch in pf.iter_batches(columns=[field], batch_size=4096):
        for text in batch.column(0).to_pylist():
            yield text or ""


def documents(path: Path, field: str = "", separator: str = "") -> Iterator[str]:
    """The non-empty documents of one file (or datasets folder), in order."""
    field = field or DEFAULT_FIELD
    if path.is_dir():
        yield from (d for d in hub.saved_documents(path, field) if d)
        return
    fmt, gz = _format(path)
    if fmt in PRETOKENIZED:
        raise DataError(f"{path}: pre-tokenized ids ({fmt}) are not text; train on them with "
                        "corpus: tokens and their data.vocab_size")  # fmt: skip
    if fmt == ".jsonl":
        yield from (d for d in _jsonl(path, gz, field) if d)
    elif fmt == ".parquet":
        yield from (d for d in _parquet(path, field) if d)
    elif separator:
        yield from (d for d in _separated(path, gz, separator) if d)
    else:
        yield decode_text(path, _raw(path, gz))


def _separated(path: Path, gz: bool, separator: str) -> Iterator[str]:
    """The pieces of a text file between `separator`s, read in blocks (a large file is
    never held whole): `text.split(separator)` of its decoded text."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    parts: list[str] = []
    offset, edge = 0, ""
    try:
        with (gzip.open if gz else open)(path, "rb") as f:
            while True:
                block = f.read(BLOCK)
                try:
                    text = decoder.decode(block, final=not block)
                except UnicodeDecodeError as e:
                    at = offset + e.start
                    raise DataError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at "
                                    f"offset {at}); a text corpus is UTF-8 text, .jsonl, "
                                    ".parquet or their .gz") from None  # fmt: skip
                if "\x00" in text:
                    raise DataError(
                        f"{path}: binary (NUL bytes near offset {offset}); "
                        "a text corpus is UTF-8 text, .jsonl, .parquet or .gz"
                    )
                offset += len(block)
                # the unfinished piece is kept in parts, joined only once a separator ends it
                if separator in edge + text:
                    *done, last = ("".join(parts) + text).split(separator)
                    yield from done
                    parts = [last]
                else:
                    parts.append(text)
                keep = len(separator) - 1  # what a separator cut by a block boundary began with
                edge = (edge + text)[-keep:] if keep else ""
                if not block:
                    break
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: unreadable ({getattr(e, 'strerror', None) or e})") from None
    yield "".join(parts)


def digest(cfg) -> str:
    """What the splits of the `text` corpus depend on: every file's bytes (a datasets
    folder's files), its name under the path, and the fields that shape the split (and a
    mixture's sources, names, weights and seed)."""
    h = hashlib.sha256()
    frac = heldout_fraction(cfg)
    if getattr(cfg, "mixture", None) is not None:
        sources = [[s.name, s.weight] for s in cfg.mixture]
        h.update(json.dumps([frac, MIXTURE_SEED, sources]).encode())
        for part in _parts(cfg):
            h.update(digest(part).encode())
        return h.hexdigest()
    h.update(json.dumps([cfg.text_field or DEFAULT_FIELD, cfg.separator, frac]).encode())
    if getattr(cfg, "dataset", None) is not None:
        h.update(f"dataset\0{hub.digest(cfg.dataset)}".encode())
        return h.hexdigest()
    for f in resolve(cfg.path):
        parts = sorted(p for p in f.rglob("*") if p.is_file()) if f.is_dir() else [f]
        for part in parts:
            name = part.relative_to(f).as_posix() if f.is_dir() else part.name
            h.update(f"{name}\0{file_digest(part)}\0".encode())
    return h.hexdigest()


def digest_fraction(doc: str) -> float:
    """u(d): the held-out rule's number for document d, in [0, 1)."""
    return int.from_bytes(hashlib.sha256(doc.encode("utf-8")).digest()[:8], "big") / 2.0**64


def split_documents(docs: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """(training, held-out) documents by digest, in their order; both non-empty."""
    us = [digest_fraction(d) for d in docs]
    held = [u < val_fraction for u in us]
    if not any(held):
        held[min(range(len(us)), key=us.__getitem__)] = True
    if all(held):
        held[max(range(len(us)), key=us.__getitem__)] = False
    train = [d for d, h in zip(docs, held) if not h]
    return train, [d for d, h in zip(docs, held) if h]


def split_tail_at_line(text: str, val_fraction: float) -> tuple[str, str]:
    """One document: its last `val_fraction` held out, cut at the nearest line boundary."""
    cut = int(len(text) * (1 - val_fraction))
    before, after = text.rfind("\n", 0, cut), text.find("\n", cut)
    options = [c + 1 for c in (before, after) if 0 <= c < len(text) - 1]
    if options:
        cut = min(options, key=lambda c: abs(c - cut))
    return text[:cut], text[cut:]


def check_source(cfg) -> None:
    """The rules of the `text` corpus's fields (no I/O: `probe` reads the files)."""
    if getattr(cfg, "mixture", None) is None:  # (a phase of data.phases has none)
        if getattr(cfg, "dataset", None) is not None:
            if cfg.path:
                raise ConfigError("path", "unset with dataset (it names the documents)")
            if cfg.separator:
                raise ConfigError("separator", "unset with dataset (each row is a document)")
        elif not cfg.path:
            raise ConfigError("path", "a file, folder or glob for corpus: text, or dataset")
    else:
        unset = "unset with mixture (each source sets its own)"
        if getattr(cfg, "dataset", None) is not None:
            raise ConfigError("dataset", unset)
        for key in ("path", "text_field", "separator"):
            if getattr(cfg, key):
                raise ConfigError(key, unset)
        if not cfg.mixture:
            raise ConfigError("mixture", "a list of sources {path, weight}")
        seen = set()
        for i, src in enumerate(cfg.mixture):
            src.name = src.name or f"source{i}"
            if src.name in seen:
                raise ConfigError(f"mixture[{i}].name", f"unique among the sources (two are "
                                  f"{src.name}: name them)")  # fmt: skip
            seen.add(src.name)
    check_tail_split(cfg)


def _parts(cfg) -> list:
    """The single-source configs of `cfg`: itself, or one per mixture source."""
    if getattr(cfg, "mixture", None) is None:  # (a phase of data.phases has none)
        return [cfg]
    return [dataclasses.replace(cfg, mixture=None, path=s.path, text_field=s.text_field,
                                separator=s.separator) for s in cfg.mixture]  # fmt: skip


def probe(cfg) -> None:
    """What `nlsweep validate` checks without tokenizing: the path resolves, and each file's
    format, text field and first document are readable."""
    for part in _parts(cfg):
        _probe_one(part)


def _probe_one(cfg) -> None:
    if getattr(cfg, "dataset", None) is not None:
        hub.probe(cfg.dataset, cfg.text_field or DEFAULT_FIELD)
        return
    files = resolve(cfg.path)
    structured = False
    for f in files:
        fmt, _ = _format(f)
        structured |= f.is_dir() or fmt in STRUCTURED
        next(documents(f, cfg.text_field, cfg.separator), None)
    if cfg.text_field and not structured:
        raise DataError(f"data.text_field: unset for text files ({files[0]}); it names the "
                        "field of .jsonl, .parquet or datasets rows")  # fmt: skip


def _stream_one(cfg) -> Iterator[str]:
    if getattr(cfg, "dataset", None) is not None:
        yield from (d for d in hub.dataset_documents(cfg.dataset, cfg.text_field or DEFAULT_FIELD)
                    if d)  # fmt: skip
        return
    for f in resolve(cfg.path):
        yield from documents(f, cfg.text_field, cfg.separator)


def heldout_rule(cfg):
    """Whether a document is held out: u(d) < val_fraction (the module docstring)."""
    frac = heldout_fraction(cfg)
    return lambda doc: digest_fraction(doc) < frac


def stream(cfg) -> Iterator[str]:
    """Every non-empty document of the `text` corpus in order, read as it goes (a mixture:
    its training documents in their drawn order, then every source's held-out ones)."""
    if getattr(cfg, "mixture", None) is None:  # (a phase of data.phases has none)
        yield from _stream_one(cfg)
        return
    yield from mixed_stream(cfg, _parts(cfg), _stream_one, heldout_rule(cfg))


def source_texts(cfg) -> tuple[str | list[str], str | list[str]]:
    """The `text` corpus: its documents, split by digest (two lists), or one document's
    head and tail (two strings); a mixture's, as `mixture.py` draws them."""
    frac = heldout_fraction(cfg)
    if getattr(cfg, "mixture", None) is not None:
        return mixed_texts(cfg, [list(_stream_one(p)) for p in _parts(cfg)], heldout_rule(cfg))
    docs = list(_stream_one(cfg))
    if not docs:
        raise DataError(f"data.path: {cfg.path} holds no text (every document is empty)")
    if len(docs) == 1:
        return split_tail_at_line(docs[0], frac)
    return split_documents(docs, frac)
