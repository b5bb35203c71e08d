"""`data.shuffle`: each epoch reads every training document once, whole, in an order drawn
from (shuffle_seed, epoch); the batches are that stream in the usual B-row layout, and a
resumed batcher (or trainer) reads the same ones."""

import json

import numpy as np
import pytest
import torch

from models.errors import ConfigError
from nlsweep.data.order import DocumentOrder
from nlsweep.data.streams import StreamBatcher
from nlsweep.training import Trainer, TrialConfig, checkpoint

EOD = 1


def split(n_docs=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    docs = [torch.randint(2, 50, (int(torch.randint(1, 12, (1,), generator=g)),), generator=g)
            for _ in range(n_docs)]  # fmt: skip
    return docs, torch.cat([t for d in docs for t in (d, torch.tensor([EOD]))])


def documents_of(stream: torch.Tensor) -> list[tuple]:
    out, cur = [], []
    for t in stream.tolist():
        cur.append(t)
        if t == EOD:
            out.append(tuple(cur))
            cur = []
    return out + ([tuple(cur)] if cur else [])


def epoch_stream(b: StreamBatcher) -> tuple[torch.Tensor, torch.Tensor]:
    """One epoch of a B = 1 batcher: its x and y concatenated."""
    xs, ys = [], []
    for _ in range(b.windows_per_epoch):
        x, y, _ = b.next()
        xs.append(x[0])
        ys.append(y[0])
    return torch.cat(xs), torch.cat(ys)


def test_an_epoch_is_every_document_once_whole_in_a_seeded_order():
    docs, tokens = split()
    whole = [tuple(d.tolist()) + (EOD,) for d in docs]
    T = 1  # B = 1, seq_len 1: an epoch is every position but the last
    b = StreamBatcher(tokens, 1, T, order=DocumentOrder(tokens, EOD, seed=7))
    x0, y0 = epoch_stream(b)
    v0 = torch.cat([x0, y0[-1:]])  # the epoch's whole stream
    assert len(v0) == len(tokens)
    assert sorted(documents_of(v0)) == sorted(whole)  # each document once, whole
    assert documents_of(v0) != whole  # in another order
    assert torch.equal(y0[:-1], x0[1:])  # targets are the next token of the same stream
    x1, y1 = epoch_stream(b)
    v1 = torch.cat([x1, y1[-1:]])
    assert sorted(documents_of(v1)) == sorted(whole) and not torch.equal(v1, v0)
    # the order is the documented one: default_rng([seed, epoch]).permutation(n)
    perm = np.random.default_rng([7, 0]).permutation(len(docs))
    assert documents_of(v0) == [whole[i] for i in perm]
    # the same seed, the same epochs; another seed, another order
    again = StreamBatcher(tokens, 1, T, order=DocumentOrder(tokens, EOD, seed=7))
    assert torch.equal(torch.cat(epoch_stream(again)[:1]), x0)
    other = StreamBatcher(tokens, 1, T, order=DocumentOrder(tokens, EOD, seed=8))
    assert not torch.equal(epoch_stream(other)[0], x0)


def test_rows_are_the_shuffled_stream_laid_out_as_the_split_is():
    docs, tokens = split(60, seed=3)
    order = DocumentOrder(tokens, EOD, seed=1)
    B, T = 4, 5
    b = StreamBatcher(tokens, B, T, order=order)
    v = torch.cat([torch.cat([docs[i], torch.tensor([EOD])])
                   for i in order.permutation(0)])  # fmt: skip
    plain = StreamBatcher(v, B, T)  # the epoch-0 stream, unshuffled, same layout
    for _ in range(b.windows_per_epoch):
        x, y, start = b.next()
        px, py, pstart = plain.next()
        assert torch.equal(x, px) and torch.equal(y, py) and start == pstart


def test_a_restored_batcher_reads_the_same_batches_across_epochs():
    _, tokens = split(30)
    make = lambda: StreamBatcher(tokens, 2, 3, order=DocumentOrder(tokens, EOD, 5))  # noqa: E731
    a = make()
    for _ in range(a.windows_per_epoch + 2):
        a.next()
    b = make()
    b.load_state_dict(a.state_dict())
    for _ in range(2 * a.windows_per_epoch):
        xa, ya, _ = a.next()
        xb, yb, _ = b.next()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_documents_are_found_across_blocks(monkeypatch):
    from nlsweep.data import order

    docs, tokens = split(25)
    whole = DocumentOrder(tokens, EOD, 0)
    monkeypatch.setattr(order, "BLOCK", 7)  # block edges fall inside and at documents
    blocked = DocumentOrder(tokens, EOD, 0)
    assert np.array_equal(whole.starts, blocked.starts)
    assert whole.lengths.tolist() == [len(d) + 1 for d in docs]


def jsonl(tmp_path, n=40):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": f"doc {i}: tide {i % 5} reef"}) + "\n"
                            for i in range(n)))  # fmt: skip
    return path


def raw(path, **data):
    return {
        "model": {"kind": "nested_lstm", "d_model": 16, "d_ff": 24},
        "cms": {"periods": {"fast": 1, "medium": 2, "slow": 4}},
        "optim": {"kind": "adam", "lr": 3e-3},
        "state": {"mode": "persistent"},
        "data": {"corpus": "text", "path": str(path), "seq_len": 16, "batch_size": 4,
                 "shuffle": True, "shuffle_seed": 3, **data},
        "train": {"steps": 12, "eval_every": 4, "eval_batches": 2, "seed": 0, "threads": 1},
    }  # fmt: skip


def test_a_trainer_shuffles_per_epoch_and_resumes_exactly(tmp_path):
    cfg = TrialConfig.from_dict(raw(jsonl(tmp_path)))
    straight = Trainer(cfg, device=torch.device("cpu"))
    assert straight.batcher.windows_per_epoch < 12  # the run crosses epochs
    full = list(straight.run())
    documents = int((straight.corpus.train == straight.corpus.vocab.eod).sum())
    assert full[-1]["data/epoch"] >= 1 and full[-1]["data/shuffled_documents"] == documents
    first = Trainer(cfg, device=torch.device("cpu"))
    for _ in first.run():
        if first.step == 4:
            break
    (tmp_path / "ck").mkdir()
    checkpoint.save(first, tmp_path / "ck")
    second = Trainer(cfg, device=torch.device("cpu"))
    checkpoint.restore(second, tmp_path / "ck")
    timing = ("perf/", "time/", "memory/")
    keep = lambda m: {k: v for k, v in m.items() if not k.startswith(timing)}  # noqa: E731
    assert [keep(m) for m in second.run()] == [keep(m) for m in full[1:]]
    r = raw(jsonl(tmp_path))
    r["data"].pop("shuffle"), r["data"].pop("shuffle_seed")
    plain = list(Trainer(TrialConfig.from_dict(r), device=torch.device("cpu")).run())
    assert plain[-1]["train/loss"] != full[-1]["train/loss"]  # the order acted
    assert "data/shuffled_documents" not in plain[-1]


def test_shuffle_needs_documents(tmp_path):
    one = tmp_path / "one.txt"
    one.write_text("one document, no separators\n" * 80)
    with pytest.raises(ConfigError, match="data.shuffle: unset: the corpus has no documents"):
        Trainer(TrialConfig.from_dict(raw(one)), device=torch.device("cpu"))
    with pytest.raises(ConfigError, match="data.shuffle: unset for a generated task"):
        TrialConfig.from_dict({"data": {"corpus": "mqar", "seq_len": 32, "shuffle": True}})
    with pytest.raises(ConfigError, match="data.shuffle_seed: unset unless shuffle"):
        TrialConfig.from_dict({"data": {"corpus": "pydoc", "shuffle_seed": 2}})
