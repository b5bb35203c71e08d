"""Prepare once, map everywhere: a text corpus is tokenized once into a content-addressed
cache, every later load maps it without tokenizing, a changed file is a new entry, and a
corrupt or incomplete entry is rebuilt, never trusted."""

import json
import shutil

import numpy as np
import pytest
import torch

from nlsweep.data import DataConfig, load_corpus, prepared
from nlsweep.data.corpora import DataError
from nlsweep.spec import load_spec
from tests.helpers import NO_GPU, spec_text


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("NLSWEEP_PREPARED", raising=False)
    return tmp_path / "cache" / "nlsweep" / "prepared"


@pytest.fixture
def writes(monkeypatch):
    """The number of cache entries written so far."""
    count = []
    real = prepared._finish
    monkeypatch.setattr(prepared, "_finish", lambda *a: count.append(1) or real(*a))
    return count


def corpus_file(folder, n=300, seed=0):
    rng = np.random.default_rng(seed)
    words = np.array(["reef", "gull", "tide", "kelp", "wave", "dune", "salt"])
    rows = [json.dumps({"text": " ".join(rng.choice(words, 6))}) for _ in range(n)]
    path = folder / "c.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


def cfg(path, **kw):
    return DataConfig(corpus="text", path=str(path), seq_len=8, batch_size=2, **kw)


def same(a, b) -> bool:
    return torch.equal(a.long(), b.long())


def test_a_second_load_maps_the_cache_and_tokenizes_nothing(tmp_path, cache, writes, monkeypatch):
    path = corpus_file(tmp_path)
    first = load_corpus(cfg(path))
    assert len(writes) == 1 and len(list(cache.iterdir())) == 1
    assert first.train.dtype == torch.uint16  # a small vocabulary: two bytes a token
    from nlsweep.data import streaming, streams

    monkeypatch.setattr(prepared, "tokenize", lambda *a: pytest.fail("tokenized again"))
    monkeypatch.setattr(streaming, "prepare_stream", lambda *a: pytest.fail("prepared again"))
    monkeypatch.setattr(streams, "tokenize", lambda *a: pytest.fail("tokenized again"))
    second = load_corpus(cfg(path))
    assert len(writes) == 1
    assert same(first.train, second.train) and same(first.val, second.val)
    assert all(same(first.val_units[k], second.val_units[k]) for k in ("bytes", "chars"))
    assert first.val_overlap == second.val_overlap and first.vocab.chars == second.vocab.chars


def test_a_changed_file_is_a_new_entry_and_settings_are_part_of_the_key(tmp_path, cache, writes):
    path = corpus_file(tmp_path)
    load_corpus(cfg(path))
    load_corpus(cfg(path, val_fraction=0.2))
    load_corpus(cfg(path, tokenizer="sentencepiece", vocab_size=30))
    assert len(writes) == 3
    corpus_file(tmp_path, seed=1)  # same name, other text
    load_corpus(cfg(path))
    assert len(writes) == 4 and len(list(cache.iterdir())) == 4


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "drop the index", "bad json"])
def test_a_corrupt_or_incomplete_entry_is_rebuilt(tmp_path, cache, writes, damage):
    path = corpus_file(tmp_path)
    want = load_corpus(cfg(path))
    want_train = want.train.clone()
    (entry,) = cache.iterdir()
    del want
    target = entry / "train.bin"
    if damage == "flip a byte":
        raw = bytearray(target.read_bytes())
        raw[10] ^= 0xFF
        target.write_bytes(bytes(raw))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:-2])
    elif damage == "drop the index":
        (entry / "index.json").unlink()
    else:
        (entry / "index.json").write_text("{not json")
    heard = []
    # a flipped byte takes the digests (the sweep's preflight); the rest, a trial's check
    got = prepared.prepared_corpus(cfg(path), out=heard.append, verify=damage == "flip a byte")
    assert len(writes) == 2 and same(got.train, want_train)
    assert "is unusable" in heard[0] and "rebuilding it" in heard[0]
    assert [p.name for p in cache.iterdir()] == [entry.name]


def test_ids_are_uint32_when_the_vocabulary_outgrows_uint16(tmp_path, cache):
    chars = "".join(chr(c) for c in range(0x100, 0x100 + 70_000) if not 0xD800 <= c < 0xE000)
    (tmp_path / "wide.txt").write_text(chars + "\n" + chars[:5000] + "\n")
    c = load_corpus(DataConfig(corpus="text", path=str(tmp_path / "wide.txt"), seq_len=4,
                               batch_size=1))  # fmt: skip
    assert len(c.vocab) > 1 << 16 and c.train.dtype == torch.uint32
    text = chars + "\n" + chars[:5000] + "\n"
    assert same(c.train, c.vocab.encode(text[: len(c.train)]))


def test_the_id_dtype_overflow_is_one_line():
    from nlsweep.data import streaming

    with pytest.raises(DataError, match="overflows uint32 token ids"):
        streaming._dtype((1 << 32) + 1, "a vocabulary")


def test_a_sweeps_preflight_prepares_once_and_its_trials_only_map(tmp_path, cache, writes):
    from nlsweep.execution.preflight import prepare_data
    from nlsweep.training import Trainer

    path = corpus_file(tmp_path, n=400)
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text({"base/data": {"corpus": "text", "path": str(path),
                                             "seq_len": 8, "batch_size": 2}}))  # fmt: skip
    s = load_spec(spec, available=NO_GPU)
    prepare_data(s)
    assert len(writes) == 1
    prepare_data(load_spec(spec, available=NO_GPU))  # a second sweep on the same data
    m = list(Trainer(s.trial_config({"train.seed": 1})).run())[-1]
    assert len(writes) == 1 and m["val/bpb"] > 0


def test_nlsweep_prepare_prepares_alone_and_a_bad_path_is_one_line(
    tmp_path, cache, writes, capsys, monkeypatch
):
    from nlsweep.cli import main

    monkeypatch.chdir(tmp_path)
    path = corpus_file(tmp_path)
    spec = tmp_path / "spec.yaml"
    data = {"corpus": "text", "path": str(path), "seq_len": 8, "batch_size": 2}
    spec.write_text(spec_text({"base/data": data}))
    assert main(["prepare", str(spec)]) == 0
    said = capsys.readouterr().out.rstrip().splitlines()
    assert said[0].startswith("  pass 1: ") and said[1].startswith("  pass 2: encoded in ")
    assert said[2].startswith("prepared corpus text in ")
    line = said[-1]
    assert f"corpus text ({path}): " in line and "training and" in line and str(cache) in line
    assert main(["prepare", str(spec)]) == 0 and len(writes) == 1
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()
    spec.write_text(spec_text({"base/data": {**data, "path": str(tmp_path / "gone.jsonl")}}))
    assert main(["prepare", str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "gone.jsonl does not exist" in err


@pytest.mark.parametrize("tokenizer", [{}, {"tokenizer": "sentencepiece", "vocab_size": 30}])
def test_the_two_streaming_passes_equal_tokenizing_the_splits_whole(
    tmp_path, cache, monkeypatch, tokenizer
):
    """Any block size and any number of encoding processes give the arrays of tokenizing
    the two splits at once; the leakage alarm and the <unk> rate agree."""
    from nlsweep.data import streaming
    from nlsweep.data.prepared import text_corpus

    path = corpus_file(tmp_path, n=500, seed=2)
    c = cfg(path, **tokenizer)
    train, val = prepared.load_texts(c)
    # in memory, from the splits, with the streamed corpus's tokenizer (a SentencePiece
    # model is trained on other threads there, see streaming.py)
    first = prepared.prepared_corpus(c)
    whole = text_corpus(c, train, val, first.vocab)
    shutil.rmtree(first.prepared)
    real = streaming.prepare_stream
    for block, workers in ((1 << 22, None), (300, 1), (1000, 2)):
        monkeypatch.setattr(streaming, "BLOCK_CHARS", block)
        monkeypatch.setattr(streaming, "prepare_stream",
                            lambda *a, real=real, w=workers: real(*a, workers=w))  # fmt: skip
        streamed = prepared.prepared_corpus(c)
        assert streamed.prepared != whole.prepared  # another key: the source's digest
        assert same(streamed.train, whole.train) and same(streamed.val, whole.val)
        for k in ("bytes", "chars"):
            assert same(streamed.val_units[k], whole.val_units[k])
        assert streamed.val_overlap == pytest.approx(whole.val_overlap, abs=1e-12)
        assert streamed.val_unk_rate == pytest.approx(whole.val_unk_rate, abs=1e-6)
        shutil.rmtree(streamed.prepared)  # prepare it again with the next settings


@pytest.mark.slow
def test_the_data_scale_benchmark_runs_at_10_mb():
    """CI runs bench/data_scale.py at its smallest size (its figures go in the README)."""
    import subprocess
    import sys

    from tests.helpers import ROOT

    cmd = [sys.executable, "bench/data_scale.py", "--sizes", "10", "--rounds", "1"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split() for line in out.stdout.splitlines() if " MB " in line]
    assert [(r[0], r[2]) for r in rows] == [("10", "prepare"), ("10", "trial")], out.stdout
