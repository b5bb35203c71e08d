"""Persistent recurrent state: carried exactly, detached, reset only where designed."""

import pytest
import torch
import torch.nn.functional as F

from models.errors import ConfigError
from models.nested_lstm import NestedLSTM, NestedLSTMConfig
from nlsweep.training.trainer import Trainer
from nlsweep.training.trial import StateConfig, TrialConfig

BASE = {
    "model": {"kind": "nested_lstm", "d_model": 12, "d_ff": 16},
    "cms": {"periods": {"fast": 1, "medium": 2, "slow": 4}},
    "data": {"corpus": "pydoc", "seq_len": 8, "batch_size": 3},
    "train": {"steps": 7, "eval_every": 7, "eval_batches": 3, "seed": 1, "threads": 1},
}


@pytest.fixture(scope="module")
def corpus():
    from nlsweep.data.config import DataConfig
    from nlsweep.data.load import load_corpus

    return load_corpus(DataConfig(corpus="pydoc"))


def trainer(corpus, **state):
    cfg = TrialConfig.from_dict({**BASE, "state": state})
    return Trainer(cfg, device=torch.device("cpu"), corpus=corpus)


def record_states(t: Trainer):
    """Wrap the model so every training forward records the state it was given and returned."""
    seen = []
    forward = t.model.forward

    def wrapped(x, state=None):
        logits, new = forward(x, state)
        if t.model.training:
            seen.append((state, tuple(s.detach().clone() for s in new)))
        return logits, new

    t.model.forward = wrapped
    return seen


def test_one_pass_equals_two_halves_with_state_carried():
    torch.manual_seed(0)
    model = NestedLSTM(NestedLSTMConfig(d_model=10, d_ff=12), 9).eval()
    x = torch.randint(0, 9, (2, 16))
    full, state_full = model(x)
    a, state_a = model(x[:, :8])
    b, state_b = model(x[:, 8:], state_a)
    assert torch.allclose(torch.cat([a, b], 1), full, atol=1e-6)
    for s, t in zip(state_b, state_full):
        assert torch.allclose(s, t, atol=1e-6)


def test_persistent_state_is_carried_and_detached(corpus):
    t = trainer(corpus, mode="persistent")
    seen = record_states(t)
    for _ in range(3):
        t.train_step()
    assert seen[0][0] is None  # the first batch starts from zeros
    for (given, _), (_, previous_out) in zip(seen[1:], seen[:-1]):
        assert all(torch.equal(g, p) for g, p in zip(given, previous_out))
        assert all(g.grad_fn is None and not g.requires_grad for g in given)
    assert t.state_resets == 0


def test_reset_mode_never_carries(corpus):
    t = trainer(corpus, mode="reset")
    seen = record_states(t)
    for _ in range(3):
        t.train_step()
    assert [given for given, _ in seen] == [None, None, None]
    assert t.state is None


def test_reset_every_and_stream_restart(corpus):
    t = trainer(corpus, mode="reset_every", every=3)
    seen = record_states(t)
    for _ in range(7):
        t.train_step()
    assert [given is None for given, _ in seen] == [True, False, False, True, False, False, True]
    assert t.state_resets == 2
    # when the streams wrap around to their start, the carried state is dropped
    p = trainer(corpus, mode="persistent")
    seen = record_states(p)
    p.batcher.cursor = (p.batcher.windows_per_epoch - 1) * p.batcher.seq_len
    p.train_step()
    p.train_step()
    assert seen[1][0] is None and p.batcher.epoch == 1 and p.state_resets == 1


def test_evaluation_carries_its_own_state_and_leaves_training_state(corpus):
    t = trainer(corpus, mode="persistent")
    for _ in range(2):
        t.train_step()
    before = tuple(s.clone() for s in t.state)
    got = t.evaluate()
    assert all(torch.equal(a, b) for a, b in zip(before, t.state))
    t.model.eval()
    total, n, state = 0.0, 0, None
    with torch.no_grad():
        for k in range(3):
            x, y = t.heldout.window(k)
            logits, state = t.model(x, state)  # evaluation starts from zeros and carries
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                     reduction="sum").item()  # fmt: skip
            n += y.numel()
    assert got == pytest.approx(total / n, rel=1e-6)


def test_state_metrics_are_logged(corpus):
    t = trainer(corpus, mode="persistent")
    m = list(t.run())[-1]
    assert m["state/resets"] == 0 and m["state/norm_h"] > 0 and m["state/norm_c"] > 0


def test_state_config_rules():
    with pytest.raises(ConfigError, match="every"):
        StateConfig(mode="reset_every")
    with pytest.raises(ConfigError, match="unset unless mode is reset_every"):
        StateConfig(mode="persistent", every=4)


def test_whole_split_in_one_pass_equals_windows_with_state_carried(corpus):
    """The final evaluation's score does not depend on the window it is computed in when
    the model carries its state (every held-out token once, rows of the whole split)."""
    t = trainer(corpus, mode="persistent")
    for _ in range(2):
        t.train_step()
    before = tuple(s.clone() for s in t.state)
    windows = t.evaluate(t.final_windows())  # windows of seq_len 8
    n_windows = t.eval_tokens
    odd = t.evaluate(t.final_windows(window=37))
    one_pass = t.evaluate(t.final_windows(window=10**6))
    assert t.eval_tokens == n_windows == len(corpus.val) - 1
    assert windows == pytest.approx(one_pass, rel=1e-5) and odd == pytest.approx(one_pass, rel=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(before, t.state))  # training state untouched
