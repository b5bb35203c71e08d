"""`state.reset_at: document`: every document is read as if it were alone from a fresh state,
whatever the windows and however a stream is split; the trainer counts the resets, resumes
them exactly, and refuses the settings where a reset could not separate documents."""

import json

import pytest
import torch

from models.errors import ConfigError
from nlsweep.training import Trainer, TrialConfig, checkpoint
from nlsweep.training.documents import DocumentResets

EOD = 1
TOL = 1e-5


def lstm():
    cfg = TrialConfig.from_dict({"model": {"kind": "nested_lstm", "d_model": 16, "d_ff": 24}})
    from models.capabilities import build_model
    from models.registry import model_kind

    torch.manual_seed(0)
    return build_model(model_kind("nested_lstm"), cfg.model, 20).eval()


def streams(lengths_by_row, seed=0):
    """Rows of documents (each followed by EOD) and each row's documents."""
    g = torch.Generator().manual_seed(seed)
    rows, docs = [], []
    for lengths in lengths_by_row:
        ds = [torch.randint(2, 20, (n,), generator=g) for n in lengths]
        docs.append(ds)
        rows.append(torch.cat([t for d in ds for t in (d, torch.tensor([EOD]))]))
    return torch.stack(rows), docs


def read(model, resets, x, window):
    """Logits of x read in windows of `window` tokens, state carried between them."""
    call = lambda xs, s, ts: model(xs, s)  # noqa: E731
    state, out = None, []
    for c in range(0, x.shape[1], window):
        logits, state = resets(call, x[:, c : c + window], state)
        out.append(logits)
    return torch.cat(out, 1)


@torch.no_grad()
def test_any_split_equals_one_pass_and_each_document_reads_as_if_alone():
    model = lstm()
    x, docs = streams([[5, 9, 3, 12], [11, 2, 7, 9]])  # both rows 33 tokens
    resets = DocumentResets(model, EOD)
    whole = read(model, resets, x, x.shape[1])
    for window in (1, 4, 7, 16):
        assert torch.allclose(read(model, resets, x, window), whole, atol=TOL, rtol=0), window
    # each document (and the EOD read before it, from a fresh state) alone, row by row
    for b, ds in enumerate(docs):
        pos = 0
        for i, d in enumerate(ds):
            ids = d if i == 0 else torch.cat([torch.tensor([EOD]), d])
            alone, _ = model(ids[None], None)
            start = pos if i == 0 else pos - 1
            assert torch.allclose(whole[b, start : start + len(ids)], alone[0], atol=TOL, rtol=0)
            pos += len(d) + 1
    # without the resets a later document does see the earlier ones
    plain, _ = model(x, None)
    assert not torch.allclose(plain, whole, atol=1e-3)


def documents_file(tmp_path, n=120):
    path = tmp_path / "docs.jsonl"
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"text": f"doc {i}: the tide turns {i % 7} over the reef"}) + "\n")
    return path


def raw(tmp_path, path=None, **state):
    return {
        "model": {"kind": "nested_lstm", "d_model": 16, "d_ff": 24},
        "cms": {"periods": {"fast": 1, "medium": 2, "slow": 4}},
        "optim": {"kind": "adam", "lr": 3e-3},
        "state": {"mode": "persistent", "reset_at": "document", **state},
        "data": {"corpus": "text", "path": str(path or documents_file(tmp_path)),
                 "seq_len": 16, "batch_size": 3},
        "train": {"steps": 6, "eval_every": 2, "eval_batches": 2, "seed": 0, "threads": 1},
    }  # fmt: skip


def test_the_trainer_resets_at_documents_counts_them_and_resumes_exactly(tmp_path):
    cfg = TrialConfig.from_dict(raw(tmp_path))
    straight = Trainer(cfg, device=torch.device("cpu"))
    full = list(straight.run())
    assert full[0]["state/document_resets"] > 0
    assert full[-1]["state/document_resets"] > full[0]["state/document_resets"]
    first = Trainer(cfg, device=torch.device("cpu"))
    for _ in first.run():
        if first.step == 2:
            break
    (tmp_path / "ck").mkdir()
    checkpoint.save(first, tmp_path / "ck")
    second = Trainer(cfg, device=torch.device("cpu"))
    checkpoint.restore(second, tmp_path / "ck")
    after = list(second.run())
    timing = ("perf/", "time/", "memory/")
    keep = lambda m: {k: v for k, v in m.items() if not k.startswith(timing)}  # noqa: E731
    assert [keep(m) for m in after] == [keep(m) for m in full[1:]]


def test_without_the_setting_the_loss_differs(tmp_path):
    # the resets change what is learnt and scored (a configured mechanism acts)
    with_ = list(Trainer(TrialConfig.from_dict(raw(tmp_path)), device=torch.device("cpu")).run())
    r = raw(tmp_path)
    r["state"].pop("reset_at")
    without = list(Trainer(TrialConfig.from_dict(r), device=torch.device("cpu")).run())
    assert with_[-1]["val/loss"] != without[-1]["val/loss"]
    assert "state/document_resets" not in without[-1]


def test_refused_where_a_reset_cannot_separate_documents(tmp_path):
    r = raw(tmp_path)
    r["model"] = {"kind": "titans", "d_model": 16}
    r.pop("cms")
    with pytest.raises(ConfigError, match="state_is_context"):
        TrialConfig.from_dict(r)
    r = raw(tmp_path)
    r["surprise"] = {"weights": {"fast": 1.0}}
    with pytest.raises(ConfigError, match="surprise"):
        TrialConfig.from_dict(r)
    r = raw(tmp_path)
    r["data"] = {"corpus": "mqar", "seq_len": 32, "batch_size": 3}
    with pytest.raises(ConfigError, match="generated task"):
        TrialConfig.from_dict(r)
    r = raw(tmp_path)
    r["model"] = {"kind": "transformer", "d_model": 16}
    r.pop("cms")
    r["state"]["mode"] = "reset"
    with pytest.raises(ConfigError, match="state.reset_at: unset: model kind transformer keeps"):
        TrialConfig.from_dict(r)
    one = tmp_path / "one.txt"
    one.write_text("a single document with no boundaries in it\n" * 50)
    with pytest.raises(ConfigError, match="no documents"):
        Trainer(TrialConfig.from_dict(raw(tmp_path, one)), device=torch.device("cpu"))


def test_a_sweep_on_a_corpus_without_documents_is_refused_before_anything_starts(
    tmp_path, capsys, monkeypatch
):
    from nlsweep.cli import main
    from tests.helpers import nothing_started, one_line, spec_text

    monkeypatch.chdir(tmp_path)
    one = tmp_path / "one.txt"
    one.write_text("a single document with no boundaries in it\n" * 50)
    data = {"corpus": "text", "path": str(one), "seq_len": 8, "batch_size": 2}
    spec = tmp_path / "spec.yaml"
    state = {"mode": "persistent", "reset_at": "document"}
    spec.write_text(spec_text({"base/data": data, "base/state": state}))
    assert main(["run", str(spec)]) == 2
    line = one_line(capsys)
    assert "spec.yaml:" in line and "state.reset_at: unset: corpus text has no documents" in line
    nothing_started(tmp_path)
