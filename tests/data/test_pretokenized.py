"""Corpus `tokens`: pre-tokenized ids (.bin as nanoGPT writes it, .npy) trained on as they are,
with a declared vocabulary; documents held out whole by the digest of their ids; every bad
input one line before anything starts."""

import hashlib

import numpy as np
import pytest
import torch

from nlsweep.cli import main
from nlsweep.data import DataConfig, load_corpus
from nlsweep.data.corpora import DataError
from nlsweep.training import Trainer, TrialConfig
from tests.helpers import nothing_started, one_line, spec_text

EOD = 99
VOCAB = 100


def documents(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, EOD, int(rng.integers(5, 40))) for _ in range(n)]


def write_bin(path, docs, dtype="uint16"):
    np.concatenate([np.append(d, EOD) for d in docs]).astype(dtype).tofile(path)
    return path


def data(path, **options):
    return {"corpus": "tokens", "path": str(path), "vocab_size": VOCAB, "seq_len": 8,
            "batch_size": 2, "options": options}  # fmt: skip


def u(doc) -> float:
    raw = np.append(doc, EOD).astype("<u4").tobytes()
    return int.from_bytes(hashlib.sha256(raw).digest()[:8], "big") / 2.0**64


def test_documents_are_held_out_whole_by_the_digest_of_their_ids(tmp_path):
    docs = documents()
    path = write_bin(tmp_path / "train.bin", docs)
    c = load_corpus(DataConfig(**data(path, dtype="uint16", eod_id=EOD)))
    held = [d for d in docs if u(d) < 0.1]
    kept = [d for d in docs if u(d) >= 0.1]
    assert 0 < len(held) < len(docs)
    want_val = np.concatenate([np.append(d, EOD) for d in held])
    want_train = np.concatenate([np.append(d, EOD) for d in kept])
    assert np.array_equal(c.val.numpy(), want_val)
    assert np.array_equal(c.train.numpy(), want_train)
    assert c.train.dtype == torch.uint16 and len(c.vocab) == VOCAB and c.vocab.eod == EOD
    assert c.val_units == {}  # no text: no bytes or characters per token
    # the same ids as .npy (its own dtype, int32) give the same splits
    npy = tmp_path / "train.npy"
    np.save(npy, np.fromfile(path, dtype=np.uint16).astype(np.int32))
    d = load_corpus(DataConfig(**data(npy, eod_id=EOD)))
    assert torch.equal(d.train.long(), c.train.long()) and torch.equal(d.val.long(), c.val.long())


def test_without_documents_the_tail_is_held_out_and_files_concatenate_in_name_order(tmp_path):
    a = np.arange(0, 90, dtype=np.uint32) % VOCAB
    b = np.arange(5, 95, dtype=np.uint32) % VOCAB
    (tmp_path / "ids").mkdir()
    a.tofile(tmp_path / "ids" / "shard_000.bin")
    b.tofile(tmp_path / "ids" / "shard_001.bin")
    c = load_corpus(DataConfig(**data(tmp_path / "ids", dtype="uint32")))
    both = np.concatenate([a, b])
    cut = int(len(both) * 0.9)
    assert np.array_equal(c.train.numpy(), both[:cut])
    assert np.array_equal(c.val.numpy(), both[cut:])
    assert c.vocab.eod is None


def test_a_trial_trains_on_ids_and_scores_per_token_only(tmp_path):
    path = write_bin(tmp_path / "train.bin", documents(120))
    raw = {
        "model": {"kind": "nested_lstm", "d_model": 16, "d_ff": 24},
        "cms": {"periods": {"fast": 1, "medium": 2, "slow": 4}},
        "optim": {"kind": "adam", "lr": 3e-3},
        "data": data(path, dtype="uint16", eod_id=EOD),
        "train": {"steps": 4, "eval_every": 2, "eval_batches": 2, "seed": 0, "threads": 1},
    }
    last = list(Trainer(TrialConfig.from_dict(raw), device=torch.device("cpu")).run())[-1]
    assert 0 < last["val/loss"] < 10 and "val/bpb" not in last and "val/bpc" not in last
    assert 0.0 <= last["data/val_overlap"] <= 1.0


def test_an_id_over_the_vocabulary_is_one_line(tmp_path):
    path = tmp_path / "ids.bin"
    np.array([1, 2, 3, 150, 4] * 20, dtype=np.uint16).tofile(path)
    with pytest.raises(DataError, match=r"ids.bin: id 150 at position 3 is not below data.vocab"):
        load_corpus(DataConfig(**data(path, dtype="uint16")))


def test_each_bad_input_is_one_line_from_validate_and_run_with_nothing_started(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    np.arange(10, dtype=np.uint16).tofile(tmp_path / "ok.bin")
    (tmp_path / "odd.bin").write_bytes(b"\x01\x02\x03")
    np.save(tmp_path / "floats.npy", np.ones(10, dtype=np.float32))
    np.save(tmp_path / "grid.npy", np.ones((3, 4), dtype=np.int32))
    (tmp_path / "text.txt").write_text("words\n")
    (tmp_path / "empty").mkdir()
    t = tmp_path
    cases = {
        "missing": ({"path": f"{t}/nope.bin"}, f"data.path: {t}/nope.bin does not exist"),
        "no dtype": ({"path": f"{t}/ok.bin"}, "ok.bin: a .bin file of raw ids; set data.options."),
        "odd size": ({"path": f"{t}/odd.bin", "options": {"dtype": "uint16"}},
                     "odd.bin: 3 bytes is not a whole number of uint16 ids"),
        "floats": ({"path": f"{t}/floats.npy"}, "floats.npy: float32 array of shape (10,)"),
        "2-d": ({"path": f"{t}/grid.npy"}, "grid.npy: int32 array of shape (3, 4)"),
        "text": ({"path": f"{t}/text.txt"}, "text.txt: not pre-tokenized ids"),
        "empty": ({"path": f"{t}/empty"}, f"data.path: {t}/empty has no .bin or .npy files"),
        "no vocab": ({"path": f"{t}/ok.bin", "vocab_size": None}, "data.vocab_size: the "
                     "vocabulary size the ids were made with"),
        "eod": ({"path": f"{t}/ok.bin", "options": {"dtype": "uint16", "eod_id": 100}},
                "data.options.eod_id: below vocab_size 100, got 100"),
        "tokenizer": ({"path": f"{t}/ok.bin", "tokenizer": "sentencepiece"}, "data.tokenizer"),
    }  # fmt: skip
    for name, (change, said) in cases.items():
        d = {"corpus": "tokens", "vocab_size": VOCAB, "seq_len": 2, "batch_size": 2, **change}
        d = {k: v for k, v in d.items() if v is not None}
        (tmp_path / "spec.yaml").write_text(spec_text({"base/data": d, "metric": "val/loss"}))
        for command in ("validate", "run"):
            assert main([command, str(tmp_path / "spec.yaml")]) == 2, (name, command)
            line = one_line(capsys)
            assert "spec.yaml:" in line and said in line, (name, line)
        nothing_started(tmp_path)


def test_a_text_corpus_given_ids_points_to_corpus_tokens(tmp_path):
    path = tmp_path / "ids.npy"
    np.save(path, np.arange(10))
    with pytest.raises(DataError, match="train on them with corpus: tokens"):
        load_corpus(DataConfig(corpus="text", path=str(path)))


def test_a_sweep_on_ids_names_only_per_token_metrics(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_bin(tmp_path / "train.bin", documents(80))
    d = data(path, dtype="uint16", eod_id=EOD)
    (tmp_path / "spec.yaml").write_text(spec_text({"base/data": d}))  # metric val/bpc
    assert main(["validate", str(tmp_path / "spec.yaml")]) == 2
    line = one_line(capsys)
    assert "metric" in line and "val/loss" in line and "val/bpb" not in line.split("got")[-1]
