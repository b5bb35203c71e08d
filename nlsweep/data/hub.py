"""Hugging Face `datasets` as sources of documents (the optional extra `nlsweep[hf]`): a
`save_to_disk` folder named by `data.path`, or `datasets.load_dataset` named by
`data.dataset`, on local files or a hub name.

    data.dataset    {name, config, split, data_files, revision}: `datasets.load_dataset(name,
                    config or None, split=split, data_files=data_files, revision=revision)`.
                    `name` is a hub dataset ("roneneldan/TinyStories") or a builder for local
                    files ("json", "parquet", "text", "csv", with data_files)
    document        a row's `data.text_field` (default `text`)
    identity        what keys the prepared cache: the settings, the sha256 of every local data
                    file, and the loaded dataset's own fingerprint (`Dataset._fingerprint`,
                    which changes with its files and version), recorded when the sweep's
                    preflight (or `nlsweep validate`, `nlsweep prepare`) loads it, under the
                    prepared root, so that trials, even on nodes that cannot reach the hub,
                    map the entry without loading the dataset again
    offline         HF_HUB_OFFLINE=1 (or no network): a hub dataset not already in the
                    `datasets` cache is one line, as is a missing one
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from models.errors import require
from nlsweep.data.corpora import DataError, file_digest, prepared_root, store_quietly

BATCH = 4096


@dataclass
class HubDataset:
    """`data.dataset`: the arguments of `datasets.load_dataset`."""

    name: str = ""
    """A hub dataset (user/name), or a builder for local files: json, parquet, text, csv."""
    config: str = ""
    """Its configuration (subset), e.g. wikitext-2-raw-v1; unset: the default."""
    split: str = "train"
    """The split read as documents (nlsweep holds out its own documents by digest)."""
    data_files: str | list[str] | None = None
    """Local files for a builder (globs allowed; relative to the current directory)."""
    revision: str = ""
    """A hub revision (tag, branch or commit) to pin."""

    def __post_init__(self):
        require(bool(self.name), "name", "a hub dataset or a builder (json, parquet, text, csv)")
        require(bool(self.split), "split", "a split name such as train")
        if isinstance(self.data_files, str):
            self.data_files = [self.data_files]


def _datasets(where: str):
    try:
        import datasets
    except ImportError:
        raise DataError(f"{where}: reading it needs the datasets package (pip install "
                        "'nlsweep[hf]')") from None  # fmt: skip
    return datasets


def is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_info.json").is_file() or (folder / "dataset_dict.json").is_file()


def _rows(ds, field: str, where: str) -> Iterator[str]:
    if field not in ds.column_names:
        raise DataError(f"{where}: no column '{field}' (it has: {', '.join(ds.column_names)}); "
                        "set data.text_field to the column holding the text")  # fmt: skip
    for batch in ds.select_columns([field]).iter(batch_size=BATCH):
        for text in batch[field]:
            if text is not None and not isinstance(text, str):
                raise DataError(f"{where}: column '{field}' holds {type(text).__name__}, "
                                "expected strings of text")  # fmt: skip
            yield text or ""


def saved_documents(folder: Path, field: str) -> Iterator[str]:
    """The rows of a `save_to_disk` folder of one split."""
    datasets = _datasets(str(folder))
    try:
        ds = datasets.load_from_disk(str(folder))
    except Exception as e:  # noqa: BLE001 - the library's own failure, as one line
        raise DataError(f"{folder}: not a readable datasets folder ({str(e).splitlines()[0]})") \
            from None  # fmt: skip
    if isinstance(ds, datasets.DatasetDict):
        raise DataError(f"{folder}: a DatasetDict with splits {', '.join(ds)}; give the folder "
                        f"of one split, e.g. {folder / next(iter(ds))}")  # fmt: skip
    yield from _rows(ds, field, str(folder))


def _where(spec: HubDataset) -> str:
    config = f" ({spec.config})" if spec.config else ""
    return f"data.dataset: {spec.name}{config} split {spec.split}"


def _files(spec: HubDataset) -> list[Path]:
    found = []
    for pattern in spec.data_files or ():
        matches = sorted(glob.glob(pattern, recursive=True))
        if not matches:
            raise DataError(f"data.dataset.data_files: no files match {pattern}")
        found += [Path(m) for m in matches if Path(m).is_file()]
    return found


def load(spec: HubDataset):
    """The loaded split, or one line naming the dataset and the library's reason."""
    where = _where(spec)
    datasets = _datasets(where)
    _files(spec)  # a missing local file is named before the library's longer message
    try:
        ds = datasets.load_dataset(
            spec.name, spec.config or None, split=spec.split,
            data_files=spec.data_files or None, revision=spec.revision or None,
        )  # fmt: skip
    except Exception as e:  # noqa: BLE001 - offline, missing, gated: the library's reason
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:240]
        offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE")
        hint = "; offline (HF_HUB_OFFLINE is set) and not in the datasets cache" if offline else ""
        raise DataError(f"{where}: cannot be loaded ({type(e).__name__}: {first}){hint}") \
            from None  # fmt: skip
    _record(spec, ds._fingerprint)
    return ds


def dataset_documents(spec: HubDataset, field: str) -> Iterator[str]:
    yield from _rows(load(spec), field, _where(spec))


def _settings(spec: HubDataset) -> str:
    files = [[str(f), file_digest(f)] for f in _files(spec)]
    return json.dumps([dataclasses.asdict(spec), files], sort_keys=True)


def _memo(settings: str) -> Path:
    return prepared_root() / "datasets" / hashlib.sha256(settings.encode()).hexdigest()


def _record(spec: HubDataset, fingerprint: str) -> None:
    store_quietly(_memo(_settings(spec)), fingerprint)  # unkept: the next digest loads it


def digest(spec: HubDataset) -> str:
    """The dataset's identity (module docstring): recorded by the last load, else loaded."""
    settings = _settings(spec)
    try:
        fingerprint = _memo(settings).read_text()
    except OSError:
        fingerprint = load(spec)._fingerprint
    return hashlib.sha256(f"{settings}\0{fingerprint}".encode()).hexdigest()


def probe(spec: HubDataset, field: str) -> None:
    """`nlsweep validate` and the preflight: load it (recording its fingerprint afresh) and
    read its first row's text field."""
    next(_rows(load(spec), field, _where(spec)), None)
