"""The passkey task: a key hidden at a random depth, asked for at the end; recall by length."""

import pytest
import torch

from models.errors import ConfigError
from models.teach import IGNORE
from nlsweep.data.config import DataConfig
from nlsweep.data.load import load_corpus
from nlsweep.data.tasks import KEY, QUERY, passkey_batch
from nlsweep.training.trainer import Trainer
from nlsweep.training.trial import TrialConfig


def test_key_hidden_at_a_depth_and_asked_for_at_the_end():
    x, y = passkey_batch(torch.Generator().manual_seed(0), 200, 30, 32, 4, split=0)
    depths = set()
    for row_x, row_y in zip(x, y):
        (d,) = (row_x[:-5] == KEY).nonzero().flatten().tolist()
        depths.add(d)
        key = row_x[d + 1 : d + 5]
        assert (key >= 22).all() and row_x[25] == QUERY
        assert torch.equal(row_x[26:], key)  # teacher forcing: the key follows the query
        active = (row_y != IGNORE).nonzero().flatten().tolist()
        assert active == [25, 26, 27, 28] and torch.equal(row_y[25:29], key)
        filler = torch.cat([row_x[:d], row_x[d + 5 : 25]])
        assert ((filler >= 3) & (filler < 22)).all()
    assert min(depths) == 0 and max(depths) == 30 - 2 * 4 - 2  # every depth occurs


def test_splits_are_disjoint_and_lengths_reported(tmp_path):
    corpus = load_corpus(DataConfig(corpus="passkey", seq_len=24, eval_lengths=[48, 96]))
    train, held = corpus.batchers(64, 24)
    seen = {tuple(r.tolist()) for _ in range(20) for r in train.next()[1]}
    heldout = {tuple(r.tolist()) for k in range(5) for r in held.window(k)[1]}
    assert not seen & heldout
    raw = {
        "model": {"kind": "transformer", "d_model": 16, "n_heads": 2, "n_layers": 1},
        "data": {"corpus": "passkey", "seq_len": 24, "batch_size": 8, "eval_lengths": [48, 96]},
        "train": {"steps": 4, "eval_every": 4, "eval_batches": 2, "threads": 1},
    }
    (m,) = list(Trainer(TrialConfig.from_dict(raw), device=torch.device("cpu")).run())
    for key in ("val/passkey_acc", "val/passkey_acc/len48", "val/passkey_acc/len96"):
        assert 0 <= m[key] <= 1
    assert m["data/val_tokens"] == 2 * 8 * 4  # only the key's digits count


def _trainer(mode: str, segment: int | None) -> Trainer:
    data = {"corpus": "passkey", "seq_len": 24, "batch_size": 4, "eval_lengths": [48]}
    raw = {
        "model": {"kind": "nested_lstm", "d_model": 16},
        "data": data | ({"eval_segment": segment} if segment else {}),
        "state": {"mode": mode},
        "train": {"steps": 2, "eval_every": 2, "eval_batches": 2, "threads": 1, "seed": 3},
    }
    return Trainer(TrialConfig.from_dict(raw), device=torch.device("cpu"))


@pytest.mark.parametrize("mode", ["persistent", "reset"])
def test_eval_segment_carries_the_state_between_segments_only_when_persistent(mode):
    """An LSTM's carried state makes 6 calls of 8 tokens one call of 48; under reset each
    segment starts from zeros, so the query's segment no longer sees the key."""
    whole, cut = _trainer(mode, None), _trainer(mode, 8)
    batcher = whole.extra_evals["val/passkey_acc/len48"]
    one = whole.evaluate(whole._segments(whole.sampled_windows(batcher)))
    parts = cut.evaluate(cut._segments(cut.sampled_windows(batcher)))
    assert (parts == pytest.approx(one, rel=1e-6)) == (mode == "persistent"), (one, parts)
    (m,) = list(cut.run())  # and the trial reports it
    assert 0 <= m["val/passkey_acc/len48"] <= 1


def test_eval_segment_needs_eval_lengths():
    with pytest.raises(ConfigError) as e:
        DataConfig(corpus="passkey", seq_len=24, eval_segment=8)
    assert e.value.key == "eval_segment"


@pytest.mark.parametrize(
    "fields, key",
    [
        ({"seq_len": 10}, "seq_len"),
        ({"seq_len": 24, "eval_lengths": [8]}, "eval_lengths"),
        ({"seq_len": 24, "vocab_size": 12}, "vocab_size"),
        ({"seq_len": 24, "num_kv_pairs": 2}, "num_kv_pairs"),
    ],
)
def test_bad_passkey_settings_name_their_field(fields, key):
    with pytest.raises(ConfigError) as e:
        DataConfig(corpus="passkey", **fields)
    assert e.value.key == key
