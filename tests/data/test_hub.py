"""`data.dataset`: `datasets.load_dataset` on local files (a builder and data_files) reads the
same documents and split as `data.path`; a hub name offline, a missing dataset or file is one
line; the prepared entry is keyed by the dataset's identity, recorded when the preflight loads
it, so trials map it without loading the dataset again."""

import json
import os
import subprocess
import sys

import pytest

from nlsweep.data import DataConfig, load_corpus, load_texts
from nlsweep.data.corpora import DataError
from tests.helpers import ROOT, spec_text

datasets = pytest.importorskip("datasets")


@pytest.fixture(autouse=True)
def caches(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")


def jsonl(tmp_path, n=50, name="docs.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps({"text": f"document {i}: the reef at tide {i % 9}"})
                            + "\n" for i in range(n)))  # fmt: skip
    return path


def test_load_dataset_on_local_files_reads_what_the_path_reads(tmp_path):
    path = jsonl(tmp_path)
    by_path = load_texts(DataConfig(corpus="text", path=str(path)))
    spec = {"name": "json", "data_files": str(path)}
    by_dataset = load_texts(DataConfig(corpus="text", dataset=spec))
    assert by_dataset == by_path and len(by_path[1]) > 0
    a = load_corpus(DataConfig(corpus="text", path=str(path)))
    b = load_corpus(DataConfig(corpus="text", dataset=spec))
    assert a.train.tolist() == b.train.tolist() and a.val.tolist() == b.val.tolist()


def test_trials_map_the_entry_without_loading_and_a_changed_file_is_a_new_entry(
    tmp_path, monkeypatch
):
    from nlsweep.data import hub, sources

    path = jsonl(tmp_path)
    cfg = DataConfig(corpus="text", dataset={"name": "json", "data_files": str(path)})
    sources.probe(cfg)  # what the preflight does: loads it, records its fingerprint
    first = load_corpus(cfg, verify=True)
    monkeypatch.setattr(hub, "load", lambda spec: pytest.fail("a trial loaded the dataset"))
    again = load_corpus(cfg)  # a trial: the key from the record, the arrays mapped
    assert again.prepared == first.prepared
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    jsonl(tmp_path, n=60)  # the same file, more documents
    changed = load_corpus(cfg)
    assert changed.prepared != first.prepared and len(changed.train) > len(first.train)


def test_missing_files_and_bad_fields_are_one_line(tmp_path):
    with pytest.raises(DataError, match="data.dataset.data_files: no files match"):
        missing = {"name": "json", "data_files": str(tmp_path / "x.jsonl")}
        load_texts(DataConfig(corpus="text", dataset=missing))
    path = jsonl(tmp_path)
    cfg = DataConfig(corpus="text", dataset={"name": "json", "data_files": str(path)},
                     text_field="body")  # fmt: skip
    with pytest.raises(DataError, match=r"data.dataset: json split train: no column 'body'"):
        load_texts(cfg)
    from models.errors import ConfigError

    with pytest.raises(ConfigError, match="path: unset with dataset"):
        DataConfig(corpus="text", path=str(path), dataset={"name": "json"})
    with pytest.raises(ConfigError, match="dataset: unset unless corpus is text"):
        DataConfig(corpus="pydoc", dataset={"name": "json"})


def test_a_hub_name_offline_is_one_line_with_nothing_started(tmp_path):
    data = {"corpus": "text", "dataset": {"name": "someone/no-such-corpus"}, "seq_len": 4,
            "batch_size": 2}  # fmt: skip
    (tmp_path / "spec.yaml").write_text(spec_text({"base/data": data}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf"), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    for command in ("validate", "run"):
        done = subprocess.run([sys.executable, "-m", "nlsweep", command, "spec.yaml"],
                              cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)  # fmt: skip
        assert done.returncode == 2, done.stderr[-2000:]
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        assert "spec.yaml:" in lines[0]
        assert "data.dataset: someone/no-such-corpus split train: " in lines[0]
        assert "cannot be loaded" in lines[0] and "offline" in lines[0], lines[0]
        assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()
