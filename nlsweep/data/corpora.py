"""Where a text corpus's files come from, its two splits as text, and the leakage alarm
between them.

Files resolve from `data.path`, then `$NLSWEEP_DATA/<folder>/`, then the user cache
(`$XDG_CACHE_HOME/nlsweep/<folder>/`; folder = tinyshakespeare or wikitext-2), and are
otherwise downloaded there and sha256-checked (an atomic write: a half-written file never
looks complete). `cfg` below is a `nlsweep.data.DataConfig` or anything with its corpus,
path and val_fraction fields (a phase of `data.phases`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import urllib.request
import zipfile
from pathlib import Path

from models.errors import ConfigError
from nlsweep.data.overlap import SAMPLE, SHINGLE, shingle_overlap
from nlsweep.data.registry import corpus_entry

DEFAULT_VAL_FRACTION = 0.1

# Folder names under $NLSWEEP_DATA and the cache (the shared data layout's spelling).
FOLDERS = {"tinyshakespeare": "tinyshakespeare", "wikitext2": "wikitext-2"}
# name -> files, their sha256, and where to fetch them (url, member inside a zip or None)
REMOTE = {
    "tinyshakespeare": {
        "input.txt": (
            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            None,
        ),
    },
    "wikitext2": {
        "valid.txt": (
            "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
            "https://wikitext.smerity.com/wikitext-2-v1.zip",
            "wikitext-2/wiki.valid.tokens",
        ),
        "test.txt": (
            "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
            "https://wikitext.smerity.com/wikitext-2-v1.zip",
            "wikitext-2/wiki.test.tokens",
        ),
    },
}


class DataError(RuntimeError):
    """A corpus cannot be found, fetched or used; the message is one line."""


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "nlsweep"


def store_quietly(path: Path, data: str | bytes) -> None:
    """Keep `data` at `path` (written whole, then renamed into place) if the cache can take
    it; a cache that cannot (read-only, full) only costs recomputing it next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
        tmp.replace(path)
    except OSError:
        pass


def prepared_root() -> Path:
    """Where prepared corpora live (`prepared.py`): NLSWEEP_PREPARED, else the cache."""
    return Path(os.environ.get("NLSWEEP_PREPARED") or cache_root() / "prepared")


CHUNK = 1 << 24


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, remembered under its (size, mtime, inode): an unchanged file
    is read once, however many trials and sweeps ask."""
    st = path.stat()
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}
    memo = cache_root() / "digests" / hashlib.sha256(str(path.resolve()).encode()).hexdigest()
    try:
        known = json.loads(memo.read_text())
        if {k: known.get(k) for k in stamp} == stamp:
            return known["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    digest = sha256_file(path)
    store_quietly(memo, json.dumps({**stamp, "sha256": digest}))
    return digest


def _download(name: str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    blobs: dict[str, bytes] = {}
    for fname, (sha, url, member) in REMOTE[name].items():
        try:
            if url not in blobs:
                with urllib.request.urlopen(url, timeout=30) as r:
                    blobs[url] = r.read()
        except OSError as e:
            files = ", ".join(REMOTE[name])
            raise DataError(
                f"corpus {name}: not found locally and the download from {url} failed ({e}); "
                f"put {files} in $NLSWEEP_DATA/{FOLDERS[name]}/, {folder}/ or data.path"
            ) from None
        data = blobs[url]
        if member is not None:
            data = zipfile.ZipFile(io.BytesIO(data)).read(member)
        if hashlib.sha256(data).hexdigest() != sha:
            raise DataError(f"corpus {name}: downloaded {fname} does not match sha256 {sha}")
        tmp = folder / f".{fname}.part"
        tmp.write_bytes(data)
        tmp.replace(folder / fname)  # atomic: a half-written file never looks complete


def resolve_files(cfg, download: bool = True) -> dict[str, Path]:
    """The files of `cfg.corpus` (one of REMOTE), found or fetched; raises DataError with
    the places looked. (Corpus `text` reads whatever `data.path` names: `sources.py`.)"""
    names = list(REMOTE[cfg.corpus])
    if cfg.path:  # asked for by name: another copy found elsewhere would hide the typo
        folder = Path(cfg.path)
        for n in names:
            if (folder / n).exists() and not (folder / n).is_file():
                raise DataError(f"data.path: {folder / n} is not a regular file (a folder, "
                                f"FIFO, device, socket); corpus {cfg.corpus} reads it")  # fmt: skip
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise DataError(
                f"data.path: {folder} has no {', '.join(missing)} (corpus {cfg.corpus}); "
                "fix the path, or leave it unset to use $NLSWEEP_DATA or the cache"
            )
        return {n: folder / n for n in names}
    candidates = []
    if os.environ.get("NLSWEEP_DATA"):
        candidates.append(Path(os.environ["NLSWEEP_DATA"]) / FOLDERS[cfg.corpus])
    cache = cache_root() / FOLDERS[cfg.corpus]
    candidates.append(cache)
    for folder in candidates:
        if all((folder / n).is_file() for n in names):
            return {n: folder / n for n in names}
    if not download:
        raise DataError(
            f"corpus {cfg.corpus}: {', '.join(names)} not found in "
            + ", ".join(str(c) for c in candidates)
        )
    _download(cfg.corpus, cache)
    return {n: cache / n for n in names}


def read_text(path: Path) -> str:
    """A corpus file as text, or one line saying why it is not usable as one."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: unreadable ({e.strerror or e})") from None
    return decode_text(path, raw)


def decode_text(path: Path, raw: bytes) -> str:
    """`raw`, the bytes of `path`, as UTF-8 text without NUL bytes, or one line saying why not."""
    if not raw.strip():
        raise DataError(f"{path}: empty; a corpus needs text to train on and to hold out")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
            "a text corpus is UTF-8 text, .jsonl, .parquet or their .gz"
        ) from None
    if "\x00" in text:
        raise DataError(f"{path}: binary (NUL bytes at offset {text.index(chr(0))}); "
                        "a text corpus is UTF-8 text, .jsonl, .parquet or their .gz")  # fmt: skip
    return text


def heldout_fraction(cfg) -> float:
    """`cfg.val_fraction`, or its default 0.1."""
    return DEFAULT_VAL_FRACTION if cfg.val_fraction is None else cfg.val_fraction


def split_tail(cfg, text: str) -> tuple[str, str]:
    """(head, tail): the last `cfg.val_fraction` (default 0.1) of `text` is held out."""
    frac = heldout_fraction(cfg)
    cut = int(len(text) * (1 - frac))
    return text[:cut], text[cut:]


def check_tail_split(cfg) -> None:
    """The rule of `val_fraction` for a corpus whose tail is held out."""
    if cfg.val_fraction is not None and not 0 < cfg.val_fraction < 1:
        raise ConfigError("val_fraction", f"a fraction in (0, 1), got {cfg.val_fraction}")


# -- the built-in text corpora (registered in kinds.py) -----------------------------------
def pydoc_texts(cfg) -> tuple[str, str]:
    """The documentation topics bundled with CPython: nothing to download."""
    from pydoc_data.topics import topics

    return split_tail(cfg, "\n\n".join(topics[k] for k in sorted(topics)))


def tinyshakespeare_texts(cfg) -> tuple[str, str]:
    return split_tail(cfg, read_text(resolve_files(cfg)["input.txt"]))


def wikitext2_texts(cfg) -> tuple[str, str]:
    """valid.txt trains and test.txt is held out."""
    files = resolve_files(cfg)
    return read_text(files["valid.txt"]), read_text(files["test.txt"])


def is_split(x) -> bool:
    """A split as `texts` may give it: one text, or its documents (a list of strings)."""
    return isinstance(x, str) or (isinstance(x, list) and all(isinstance(d, str) for d in x))


def pieces(split) -> list[str]:
    """A split as text in order: the one string, or each document and a newline."""
    return [split] if isinstance(split, str) else [d + "\n" for d in split]


def load_texts(cfg) -> tuple:
    """(training split, held-out split) of the text corpus `cfg.corpus`, from its registered
    `texts` function: each one string, or a list of its documents. One line if that returns
    anything else, or an empty split."""
    kind = corpus_entry(cfg.corpus)
    try:
        got = kind.texts(cfg)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - a plugin's code: one line naming it
        last = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        raise DataError(f"corpus {cfg.corpus} ({kind.source}): {type(e).__name__}: "
                        f"{last}".rstrip(": ")) from None  # fmt: skip
    if not (isinstance(got, tuple) and len(got) == 2 and all(map(is_split, got))):
        what = type(got).__name__
        raise DataError(f"corpus {cfg.corpus}: its texts() ({kind.source}) returned {what}; "
                        "expected (training, held-out), each a string or a list of document "
                        "strings")  # fmt: skip
    if not all(any(pieces(t)) if isinstance(t, str) else any(t) for t in got):
        raise DataError(f"corpus {cfg.corpus}: empty training or held-out split")
    return got


def cached_overlap(train, val) -> float:
    """The leakage alarm (`overlap.py`) of two splits, remembered on disk by their hash:
    every trial of a sweep reads the same splits, and recomputing cost each trial seconds."""
    h = hashlib.sha256(f"{SHINGLE}\0{SAMPLE}\0".encode())
    for split in (train, val):
        for piece in pieces(split):
            h.update(piece.encode("utf-8", "surrogatepass"))
        h.update(f"\0{len(split)}\0{isinstance(split, str)}\0".encode())
    digest = h.hexdigest()
    path = cache_root() / "overlap" / digest
    try:
        return float(path.read_text())
    except (OSError, ValueError):
        pass
    value = shingle_overlap(pieces(train), pieces(val)).value
    store_quietly(path, repr(value))
    return value
