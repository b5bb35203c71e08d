"""`model.memory_use` (mal | mac | mag) and `model.persistent_tokens`: causality, MAC against a
hand composition, split invariance where the memory is carried, and refused settings."""

import math

import pytest
import torch
import torch.nn.functional as F

from models.errors import ConfigError
from models.titans import Titans, TitansConfig
from tests.models.streams import assert_same, in_pieces

V = 23


def ids(B=2, T=24, seed=0):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def model(**kw) -> Titans:
    torch.manual_seed(0)
    base = dict(d_model=16, n_heads=2, memory_chunk=4)
    return Titans(TitansConfig(**{**base, **kw}), V).double().eval()


VARIANTS = {
    "mal+persistent": dict(persistent_tokens=3),
    "mag": dict(memory_use="mag", window=4),
    "mag+persistent": dict(memory_use="mag", window=4, persistent_tokens=2),
    "mac": dict(memory_use="mac", mac_segment=8),
    "mac+persistent+heads": dict(
        memory_use="mac", mac_segment=8, persistent_tokens=4, memory_heads=2
    ),  # fmt: skip
    "mac+window": dict(memory_use="mac", mac_segment=8, window=3),
}


@pytest.mark.parametrize("kw", VARIANTS.values(), ids=VARIANTS.keys())
def test_outputs_never_depend_on_future_tokens(kw):
    m = model(**kw)
    x = ids()
    y = x.clone()
    y[:, 13:] = (y[:, 13:] + 1) % V
    a, _ = m(x)
    b, _ = m(y)
    assert torch.allclose(a[:, :13], b[:, :13], atol=1e-12)
    assert not torch.allclose(a[:, 13:], b[:, 13:], atol=1e-3)


def attend(attn, x, prefix, mask, heads):
    """Softmax attention written out: queries from x, keys and values from [prefix; x]."""
    z = torch.cat([prefix, x], 1)
    q, k, v = attn.qkv(z).chunk(3, dim=-1)
    q = q[:, prefix.shape[1] :]
    B, T, d = x.shape
    split = lambda t: t.view(B, t.shape[1], heads, d // heads).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    s = q @ k.transpose(-1, -2) / math.sqrt(d // heads)
    s = s.masked_fill(~mask, float("-inf"))
    return attn.out((s.softmax(-1) @ v).transpose(1, 2).reshape(B, T, d))


def test_mac_at_one_segment_is_the_hand_composition():
    """One layer, one segment: retrieve with W_0, attend over [persistent; retrieved; tokens]
    with query t seeing retrieved and tokens up to t, write the attention's output to the
    memory, add its read-out, then the MLP."""
    m = model(
        memory_use="mac", mac_segment=16, persistent_tokens=3, n_layers=1, positions="learned"
    )
    x = ids(T=12)
    logits, state = m(x)
    blk = m.blocks[0]
    mem, b = blk.memory, blk.block
    h = m.embed(x)
    u = blk.norm_mem(h)
    q = F.normalize(mem.proj(u)[..., 32:], dim=-1)
    w1, w2 = mem.init_weights
    r = mem.out(F.silu(q @ w1) @ w2)
    prefix = torch.cat([blk.persistent.expand(2, -1, -1), r], 1)
    T = 12
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    mask = torch.cat([torch.ones(T, 3, dtype=torch.bool), causal, causal], 1)
    h1 = h + attend(b.attn, b.norm_attn(h), prefix, mask, heads=2)
    read, want_state = mem(blk.norm_mem(h1))
    h2 = h1 + read
    h3 = h2 + b.mlp(b.norm_mlp(h2))
    assert torch.allclose(logits, m.head(m.norm_out(h3)), atol=1e-12, rtol=0)
    for s, w in zip(state, want_state):
        assert torch.allclose(s, w, atol=1e-12, rtol=0)


@pytest.mark.parametrize("pieces", [[8, 16], [16, 8], [8, 8, 8]])
def test_mac_splits_at_segments_equal_one_pass(pieces):
    """Attention lives inside a segment and the memory is carried, so a stream split into
    calls at segment boundaries gives the one-pass logits and state, two layers deep."""
    m = model(memory_use="mac", mac_segment=8, persistent_tokens=2, n_layers=2)
    x = ids(T=24)
    full, s_full = m(x)
    y, state = in_pieces(m, x, pieces)
    assert_same(y, full)
    assert_same(state, s_full)


def test_mag_memory_carries_exactly_and_attention_is_local():
    """One MAG layer: the memory reads the embedding itself, so its state after a split
    stream equals one pass; attention sees a window of 4, so outputs match from the 4th
    token of each call on."""
    m = model(memory_use="mag", window=4, persistent_tokens=2, n_layers=1)
    x = ids(T=20)
    full, s_full = m(x)
    a, s_a = m(x[:, :9])
    b, s_b = m(x[:, 9:], s_a)
    for u, v in zip(s_b, s_full):
        assert torch.allclose(u, v, atol=1e-12, rtol=0)
    assert torch.allclose(a, full[:, :9], atol=1e-12, rtol=0)
    # RoPE is relative up to its float32 angles (1e-8 here); persistent tokens have no
    # position, so they shift with the call (rotated, they moved outputs by 0.03-0.1)
    assert torch.allclose(b[:, 3:], full[:, 12:], atol=1e-7, rtol=0)
    assert not torch.allclose(b[:, :3], full[:, 9:12], atol=1e-6)


@pytest.mark.parametrize("use", ["mal", "mag", "mac"])
def test_persistent_tokens_act_and_train(use):
    extra = {"mag": dict(window=4), "mac": dict(mac_segment=8)}.get(use, {})
    m = model(memory_use=use, persistent_tokens=3, **extra).train()
    x = ids(T=16)
    logits, _ = m(x)
    F.cross_entropy(logits[:, :-1].reshape(-1, V), x[:, 1:].reshape(-1)).backward()
    for blk in m.blocks:
        assert blk.persistent.shape == (1, 3, 16) and blk.persistent.grad.abs().sum() > 0
    with torch.no_grad():
        m.blocks[0].persistent.add_(1.0)
    assert not torch.allclose(m(x)[0], logits, atol=1e-6)


def test_mal_without_persistent_tokens_is_the_kind_as_it_was():
    """memory_use mal and no persistent tokens add no parameter (so checkpoints and
    trained results of the kind stand), and the block takes the plain attention path."""
    m = model()
    assert not any("persistent" in n or ".norm_a." in n for n, _ in m.named_parameters())
    assert m.blocks[0].persistent is None


@pytest.mark.parametrize(
    "kw, key",
    [
        (dict(memory_use="mac"), "mac_segment"),
        (dict(mac_segment=8), "mac_segment"),
        (dict(memory_use="mag"), "window"),
        (dict(memory_use="mix"), "memory_use"),
        (dict(persistent_tokens=-1), "persistent_tokens"),
    ],
)
def test_settings_that_cannot_act_are_refused(kw, key):
    with pytest.raises(ConfigError, match=key):
        TitansConfig(d_model=16, n_heads=2, **kw)


def test_hope_uses_its_memory_as_context_too():
    """`hope` is Titans blocks plus the CMS chain, so memory_use reaches it; with MAC a
    stream split at segment boundaries still equals one pass (memory, chain and logits),
    with the chain learning in context from the targets."""
    from models.cms import CMSConfig
    from models.hope import Hope, HopeConfig
    from models.teach import TeachConfig

    torch.manual_seed(0)
    cfg = HopeConfig(
        d_model=16, n_heads=2, memory_chunk=4, memory_use="mac", mac_segment=8, persistent_tokens=2
    )
    m = Hope(cfg, V, CMSConfig(token_periods=[2, 4], inner_lr=0.05), TeachConfig()).double()
    x = ids(T=17)
    inp, tgt = x[:, :16], x[:, 1:]
    full, s_full = m(inp, targets=tgt)
    a, s_a = m(inp[:, :8], targets=tgt[:, :8])
    b, s_b = m(inp[:, 8:], s_a, targets=tgt[:, 8:])
    assert torch.allclose(torch.cat([a, b], 1), full, atol=1e-10, rtol=0)
    for u, v in zip(s_b, s_full):
        assert torch.allclose(u, v, atol=1e-10, rtol=0)
    assert isinstance(m.blocks[0].persistent, torch.nn.Parameter)
