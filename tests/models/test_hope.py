"""HOPE's CMS chain: token periods, causality of in-context learning, teach scale 0 = off."""

import pytest
import torch

from models.cms import CMSConfig
from models.hope import Hope, HopeAttention, HopeAttentionConfig, HopeConfig
from models.teach import IGNORE, TeachConfig, shape_signal
from nlsweep.data.config import DataConfig
from nlsweep.data.load import load_corpus
from nlsweep.training.trainer import Trainer
from nlsweep.training.trial import TrialConfig

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


def test_teach_statistics_are_token_weighted_means_over_the_segments_since_the_last_read(
    monkeypatch,
):
    import models.cms_chain as chain_module

    seen = []

    def recording(err, scale, cfg, active):
        out, st = shape_signal(err, scale, cfg, active)
        seen.append(({k: float(v) for k, v in st.items()}, int(active.sum()), scale))
        return out, st

    monkeypatch.setattr(chain_module, "shape_signal", recording)
    model = hope_attention(clip=0.2, threshold=0.55).train()
    y = batch()[1]
    y[0, :3] = IGNORE  # segments whose active tokens differ: the means are weighted
    model.teach_scale = 0.5
    model(batch()[0], None, targets=y)
    model.teach_scale = 0.25
    model(*batch(seed=1)[:1], None, targets=batch(seed=1)[1])
    got, n = model.chain.read_stats(), sum(t for _, t, _ in seen)
    assert len(seen) == 2 * 10 and n == 2 * 2 * 10 - 3
    for k in ("norm", "clip_rate", "gate_rate", "scaled_norm"):
        assert got[f"teach/{k}"] == pytest.approx(sum(st[k] * t for st, t, _ in seen) / n)
    assert got["teach/scale"] == pytest.approx(sum(s * t for _, t, s in seen) / n)
    assert 0 < got["teach/clip_rate"] < 1 and 0 < got["teach/gate_rate"] < 1
    assert not any(k.startswith("teach/") for k in model.chain.read_stats())  # summed anew


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
    # sampled: scoring the whole held-out split at seq_len 12 would take most of each run
    "train": {"steps": 6, "eval_every": 3, "eval_batches": 2, "seed": 2, "threads": 1,
              "final_eval": "sampled"},
}  # fmt: skip


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


@pytest.mark.parametrize("cap", [1e9, 1e-4])
def test_a_memory_write_bound_that_never_binds_or_mostly_binds_is_a_warning(corpus, cap):
    t, hist = run(corpus, model={"memory_max_write": cap})
    bounded = hist[-1]["memory/0/bounded"]  # one layer
    assert (bounded == 0) == (cap == 1e9)
    w = t.warnings()
    assert ("memory.max_write" in w) == (bounded == 0)
    if bounded == 0:
        assert "never bound" in w["memory.max_write"]
    else:
        assert 0 < hist[-1]["memory/0/bound_rate"] <= 1
    # a bound that cuts most writes is a saturated memory, and says so
    assert ("memory.0.bounded" in w) == (cap == 1e-4)
    if cap == 1e-4:
        assert "saturated" in w["memory.0.bounded"]


def test_hope_requires_a_chain_and_others_refuse_one():
    from models.errors import ConfigError

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


# -- exactness of the in-context learning (float64) ------------------------------------------


def _double_chain(kind="hope_attention", periods=(4, 8, 16), n_layers=1, seed=0):
    torch.manual_seed(seed)
    common = {"d_model": 16, "n_heads": 2, "n_layers": n_layers, "d_ff": 32}
    cms = CMSConfig(token_periods=list(periods), inner_lr=0.05)
    if kind == "hope":
        model = Hope(HopeConfig(**common, memory_chunk=3), V, cms, TeachConfig())
    else:
        model = HopeAttention(HopeAttentionConfig(**common), V, cms, TeachConfig())
    model = model.double()
    with torch.no_grad():  # off the initialisation, so that no term vanishes by symmetry
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("scale", [1.0, 0.3])
def test_every_block_learns_from_the_exact_gradient_of_its_token_losses(scale):
    """G_l after a segment == scale x autograd d(sum_t l_t)/d dW_l, for the last block (the
    error carried back through the final LayerNorm) and the earlier ones (through the
    later blocks), in float64. The old code, delta at y_L for every block, was 0.5-0.8 off."""
    model = _double_chain()
    chain = model.chain
    B, T = 3, 3  # one segment, shorter than every period: the sums stay pending
    x, y = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))
    y[1, 2] = IGNORE
    h, _ = model.body(x)
    h = h.detach()
    state = list(chain.init_state(B, "cpu", torch.float64))
    for i in range(len(chain.blocks)):  # nonzero fast weights already learned
        state[6 * i] = 0.05 * torch.randn_like(state[6 * i])
        state[6 * i + 3] = 0.05 * torch.randn_like(state[6 * i + 3])
    _, new = chain(h, tuple(state), model.head, model.norm_out, y, scale)
    leaves, out = [], h
    for i, blk in enumerate(chain.blocks):
        dw1 = state[6 * i].clone().requires_grad_(True)
        dw2 = state[6 * i + 3].clone().requires_grad_(True)
        leaves += [dw1, dw2]
        out, _ = blk(out, dw1, dw2)
    logits = model.head(model.norm_out(out))
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, V), y.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    grads = torch.autograd.grad(loss, leaves)
    for i in range(len(chain.blocks)):
        for j, k in enumerate((2, 5)):  # pending G1, G2 of block i
            want = scale * grads[2 * i + j]
            err = (new[6 * i + k] - want).norm() / want.norm()
            assert err < 1e-6, (i, j, float(err))


def _task_batch(task, n, seed):
    from nlsweep.data.tasks import mqar_batch, passkey_batch

    g = torch.Generator().manual_seed(seed)
    if task == "mqar":
        return mqar_batch(g, n, 16, V, 3, 0)
    return passkey_batch(g, n, 16, V, 3, 0)


@pytest.mark.parametrize("kind", ["hope_attention", "hope"])
@pytest.mark.parametrize("task", ["mqar", "passkey"])
def test_a_sequence_learns_in_context_from_its_own_prefix_only(kind, task):
    """(a) a sequence alone == the same sequence among 4 others; (b) changing the target or
    the ignore mask at any position >= t leaves every prediction at <= t unchanged (the
    old batch-count normalisation moved earlier logits by 0.06 when later ones were masked),
    while in-context learning visibly acts on the predictions after t."""
    model = _double_chain(kind, periods=(1, 4), n_layers=2, seed=1)
    model.teach_scale = 1.0
    x, y = _task_batch(task, 5, seed=3)
    y = y.clone()
    y[:, ::3] = torch.randint(0, V, y[:, ::3].shape)  # real targets among the ignored ones
    alone, _ = model(x[:1], targets=y[:1])
    together, _ = model(x, targets=y)
    assert torch.allclose(alone[0], together[0], atol=1e-12, rtol=0)
    acted = False
    T = x.shape[1]
    for t in range(T):
        changed = y.clone()
        changed[:, t:] = (changed[:, t:].clamp(min=0) + 1) % V  # new targets (unmasked)
        masked = y.clone()
        masked[:, t:] = IGNORE
        for other in (changed, masked):
            got, _ = model(x, targets=other)
            assert torch.allclose(got[:, : t + 1], together[:, : t + 1], atol=1e-12, rtol=0), t
            acted |= not torch.allclose(got[:, t + 1 :], together[:, t + 1 :], atol=1e-9)
    assert acted  # the check above is not vacuous: learning in context moved later logits


def test_chain_any_split_equals_one_pass():
    """The chain's token clock carries the segment grid and pending sums across calls."""
    model = _double_chain(periods=(2, 6))
    model.teach_scale = 1.0
    x, y = torch.randint(0, V, (2, 15)), torch.randint(0, V, (2, 15))
    h, _ = model.body(x)
    full, s_full = model.chain(h, None, model.head, model.norm_out, y, 1.0)
    outs, state = [], None
    for a, b in ((0, 5), (5, 6), (6, 15)):
        out, state = model.chain(h[:, a:b], state, model.head, model.norm_out, y[:, a:b], 1.0)
        outs.append(out)
    assert torch.allclose(torch.cat(outs, 1), full, atol=1e-12, rtol=0)
    for u, v in zip(state, s_full):
        assert torch.allclose(u, v, atol=1e-12, rtol=0)


def test_chunked_chain_equals_its_definition_and_chunk_of_the_fastest_period_is_exact():
    """cms.inner_chunk C: each chunk is read with the fast weights of its start, every
    gradient taken there, and the level steps due inside it applied at its end in order,
    each with its own tokens' gradients. Checked against that definition written with
    autograd (float64, momentum on), and C = the fastest period against the exact form."""
    torch.manual_seed(4)
    common = {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32}

    def make(chunk):
        torch.manual_seed(4)
        cms = CMSConfig(token_periods=[2, 4], inner_lr=0.05, inner_momentum=0.5, inner_chunk=chunk)
        model = HopeAttention(HopeAttentionConfig(**common), V, cms, TeachConfig()).double()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        return model

    exact, same, chunked = make(0), make(2), make(8)
    x, y = torch.randint(0, V, (2, 16)), torch.randint(0, V, (2, 16))
    y[0, 5] = IGNORE
    a, s_a = exact(x, targets=y)
    b, s_b = same(x, targets=y)
    assert torch.equal(a, b) and all(torch.equal(u, v) for u, v in zip(s_a, s_b))
    got, s_got = chunked(x, targets=y)
    assert not torch.allclose(got, a, atol=1e-6)  # a different, real form
    alone, _ = chunked(x[1:], targets=y[1:])  # a row's learning is its own
    assert torch.allclose(alone[0], got[1], atol=1e-12, rtol=0)

    chain, model = chunked.chain, chunked
    h, _ = model.body(x)
    h = h.detach()
    fast = [[t.clone() for t in chain.init_state(2, "cpu", torch.float64)[6 * i : 6 * i + 6]]
            for i in range(2)]  # fmt: skip
    want = []
    for c in range(0, 16, 8):
        leaves = [f[k].clone().requires_grad_(True) for f in fast for k in (0, 3)]
        out = h[:, c : c + 8]
        for i, blk in enumerate(chain.blocks):
            out, _ = blk(out, leaves[2 * i], leaves[2 * i + 1])
        logits = model.head(model.norm_out(out))
        want.append(logits.detach())
        losses = torch.nn.functional.cross_entropy(
            logits.reshape(-1, V), y[:, c : c + 8].reshape(-1), ignore_index=IGNORE,
            reduction="none",
        ).view(2, 8)  # fmt: skip
        for s in range(0, 8, 2):  # the fastest period's windows, in order
            gs = torch.autograd.grad(losses[:, s : s + 2].sum(), leaves, retain_graph=True)
            for i, f in enumerate(fast):
                f[2], f[5] = f[2] + gs[2 * i], f[5] + gs[2 * i + 1]
            for p, f in zip(chain.periods, fast):
                if (c + s + 2) % p == 0:
                    for dw, m, g in ((0, 1, 2), (3, 4, 5)):
                        f[m] = 0.5 * f[m] + f[g]
                        f[dw] = f[dw] - 0.05 * f[m]
                        f[g] = torch.zeros_like(f[g])
    assert torch.allclose(got, torch.cat(want, 1), atol=1e-10, rtol=0)
    for i, f in enumerate(fast):
        for k in range(6):
            assert torch.allclose(s_got[6 * i + k], f[k], atol=1e-10, rtol=0), (i, k)


@pytest.mark.parametrize(
    ("periods", "momentum", "chunk", "cuts"),
    [((2, 4), 0.5, 0, (0, 5, 16)), ((1, 4), 0.0, 0, (0, 3, 16)), ((2, 8), 0.7, 4, (0, 6, 16))],
)
def test_dual_backward_equals_keeping_each_fast_weight(periods, momentum, chunk, cuts):
    """The backward pass that rebuilds dy dW from the call's start state and its tokens'
    factors (`_Bank`) gives every outer parameter and the input the same gradient as the one
    that keeps each segment's fast weight, in float64: with momentum, a chunked chain, and a
    second call that starts mid-window (pending sums and momenta from the first)."""
    grads = {}
    for dual in (False, True):
        torch.manual_seed(2)
        cms = CMSConfig(token_periods=list(periods), inner_lr=0.05, inner_momentum=momentum,
                        inner_chunk=chunk)  # fmt: skip
        cfg = HopeAttentionConfig(d_model=16, n_heads=2, n_layers=1, d_ff=32)
        model = HopeAttention(cfg, V, cms, TeachConfig()).double()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        model.chain.dual = dual
        x, y = torch.randint(0, V, (2, 16)), torch.randint(0, V, (2, 16))
        y[1, 7] = IGNORE
        h = model.body(x)[0].detach().requires_grad_(True)
        state, loss = None, 0
        for a, b in zip(cuts, cuts[1:]):
            logits, state = model.chain(h[:, a:b], state, model.head, model.norm_out,
                                        y[:, a:b], 1.0)  # fmt: skip
            loss = loss + (logits * torch.linspace(-1, 1, V, dtype=logits.dtype)).pow(2).sum()
        params = [h, *model.chain.parameters(), *model.head.parameters()]
        grads[dual] = torch.autograd.grad(loss, params)
    assert any(float(g.abs().sum()) > 0 for g in grads[True])
    for kept, rebuilt in zip(grads[False], grads[True]):
        assert torch.allclose(kept, rebuilt, atol=1e-11, rtol=1e-9)
