"""HOPE's CMS chain: token periods, causality of in-context learning, teach scale 0 = off."""

import pytest
import torch

from models.cms import CMSConfig
from models.hope import Hope, HopeAttention, HopeAttentionConfig, HopeConfig
from models.teach import TeachConfig
from nlsweep.data import DataConfig, load_corpus
from nlsweep.train import Trainer, TrialConfig

V = 19


def hope_attention(periods=(1, 4, 16), **teach):
    torch.manual_seed(0)
    cfg = HopeAttentionConfig(d_model=16, n_heads=2, n_layers=1, d_ff=32)
    cms = CMSConfig(token_periods=list(periods), inner_lr=0.5)
    return HopeAttention(cfg, V, cms, TeachConfig(**teach))


def batch(T=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (2, T), generator=g), torch.randint(0, V, (2, T), generator=g)


def test_cms_blocks_update_exactly_at_their_token_periods():
    model = hope_attention()
    state = None
    fast_level2 = []
    for i in range(3):  # 30 tokens, in batches of 10 that straddle the periods 4 and 16
        x, y = batch(seed=i)
        _, state = model(x, state, targets=y)
        fast_level2.append(state[12].abs().sum().item())  # dW1 of the period-16 block
    assert model.chain.updates.tolist() == [30, 7, 1]
    assert fast_level2[0] == 0 and fast_level2[1] > 0  # first update at token 16
    assert state[-1].tolist() == [30.0, 30.0]  # the token clock
    # pending sums: level 1 holds tokens 29..30 (2 since its last update at 28)
    assert state[6 + 2].abs().sum() > 0 and state[2].abs().sum() == 0


def test_a_prediction_never_uses_its_own_or_later_targets():
    model = hope_attention()
    x, y = batch(T=12)
    y2 = y.clone()
    y2[:, 7:] = (y2[:, 7:] + 1) % V
    a, _ = model(x, targets=y)
    b, _ = model(x, targets=y2)
    assert torch.allclose(a[:, :8], b[:, :8], atol=1e-6)  # position 7 predicted before y_7
    assert not torch.allclose(a[:, 8:], b[:, 8:], atol=1e-6)  # learning in context acted
    c, _ = model(x)  # no targets: nothing learned, the outer weights alone
    assert torch.allclose(a[:, :1], c[:, :1], atol=1e-6)
    assert not torch.allclose(a[:, 4:], c[:, 4:], atol=1e-6)


BASE = {
    "model": {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32, "memory_chunk": 4},
    "cms": {"token_periods": [1, 4], "inner_lr": 0.5, "inner_momentum": 0.5},
    "data": {"corpus": "pydoc", "seq_len": 12, "batch_size": 3},
    "state": {"mode": "persistent"},
    "train": {"steps": 6, "eval_every": 3, "eval_batches": 2, "seed": 2, "threads": 1},
}


@pytest.fixture(scope="module")
def corpus():
    return load_corpus(DataConfig(corpus="pydoc"))


def run(corpus, kind="hope", model=None, teach=None):
    raw = {**BASE, "model": {**BASE["model"], "kind": kind, **(model or {})}}
    if teach is not None:
        raw["teach"] = teach
    t = Trainer(TrialConfig.from_dict(raw), device=torch.device("cpu"), corpus=corpus)
    return t, list(t.run())


def test_teach_scale_zero_equals_inner_updates_off(corpus):
    off, m_off = run(corpus, model={"inner_updates": False})
    zero, m_zero = run(corpus, teach={"scale": 0.0})
    on, m_on = run(corpus)
    assert [m["val/bpc"] for m in m_zero] == [m["val/bpc"] for m in m_off]
    for a, b in zip(off.model.state_dict().values(), zero.model.state_dict().values()):
        assert torch.equal(a, b)
    assert m_zero[-1]["cms_inner/0_p1/updates"] == 0 and m_zero[-1]["memory/0/writes"] == 0
    chain_state = zero.state[-zero.model.n_chain : -1]  # fast weights, momenta, pending sums
    assert all(t.abs().sum() == 0 for t in chain_state)
    memory_state = zero.state[: -zero.model.n_chain]  # (W1, W2, S1, S2) of the one layer
    assert memory_state[2].abs().sum() == 0 and memory_state[3].abs().sum() == 0
    assert m_on[-1]["cms_inner/0_p1/updates"] == 6 * 12  # one per token of the clock
    assert m_on[-1]["val/bpc"] != m_off[-1]["val/bpc"]
    assert zero.warnings() == {} and off.warnings() == {}


def test_never_firing_paths_become_warnings(corpus):
    t, _ = run(corpus, teach={"clip": 5.0, "threshold": 1e6})
    w = t.warnings()
    assert "teach.clip" in w and "never bound" in w["teach.clip"]
    assert "teach.threshold" in w and "closed the gate" in w["teach.threshold"]


def test_hope_requires_a_chain_and_others_refuse_one():
    from models.common import ConfigError

    with pytest.raises(ConfigError, match="cms.token_periods"):
        TrialConfig.from_dict({"model": {"kind": "hope"}})
    with pytest.raises(ConfigError, match="no CMS chain"):
        TrialConfig.from_dict({"model": {"kind": "titans"}, "cms": {"token_periods": [1]}})
    with pytest.raises(ConfigError, match="teach: unset"):
        TrialConfig.from_dict({"model": {"kind": "transformer"}, "teach": {"scale": 0.5}})


def test_hope_model_kinds_build():
    assert isinstance(
        Hope(HopeConfig(d_model=16, n_heads=2), V, CMSConfig(token_periods=[1]), TeachConfig()),
        Hope,
    )
