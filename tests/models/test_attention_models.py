"""Transformer, Titans memory and the teach signal: causality, equivalences, exact gradients."""

import pytest
import torch
import torch.nn.functional as F

from models.blocks import window_mask
from models.errors import ConfigError
from models.teach import IGNORE, TeachConfig, shape_signal, teach_signal
from models.titans import Titans, TitansConfig
from models.titans_memory import MemoryConfig, NeuralMemory
from models.transformer import Transformer, TransformerConfig
from tests.models.streams import assert_stream_splits

V = 23


def tokens(B=2, T=24, seed=0):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "make",
    [
        lambda: Transformer(TransformerConfig(d_model=16, n_heads=2, d_ff=32), V),
        lambda: Transformer(TransformerConfig(d_model=16, n_heads=2, positions="learned"), V),
        lambda: Transformer(TransformerConfig(d_model=16, n_heads=2, window=4), V),
        lambda: Titans(TitansConfig(d_model=16, n_heads=2, memory_chunk=4), V),
        lambda: Titans(TitansConfig(d_model=16, n_heads=2, memory_depth=1, memory_chunk=1), V),
    ],
    ids=["rotary", "learned", "window", "titans", "titans-linear-mem"],
)
def test_outputs_never_depend_on_future_tokens(make):
    torch.manual_seed(0)
    model = make().eval()
    x = tokens()
    y = x.clone()
    y[:, 13:] = (y[:, 13:] + 1) % V
    a, _ = model(x)
    b, _ = model(y)
    assert torch.allclose(a[:, :13], b[:, :13], atol=1e-5)
    assert not torch.allclose(a[:, 13:], b[:, 13:], atol=1e-3)


def test_window_limits_what_attention_sees():
    mask = window_mask(6, 3, "cpu")
    assert mask.sum(1).tolist() == [1, 2, 3, 3, 3, 3] and not mask.triu(1).any()
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(d_model=16, n_heads=2, n_layers=1, window=4), V).eval()
    x = tokens(T=16)
    y = x.clone()
    y[:, 0] = (y[:, 0] + 1) % V  # outside every window from position 4 on (one layer)
    a, _ = model(x)
    b, _ = model(y)
    assert torch.allclose(a[:, 4:], b[:, 4:], atol=1e-6)
    assert not torch.allclose(a[:, :4], b[:, :4], atol=1e-4)


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("momentum, forget", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("cap", [1.0, 0.02])  # 0.02: most writes are bounded
@pytest.mark.parametrize("forget_to", ["zero", "init"])
def test_chunk_one_equals_token_by_token(depth, momentum, forget, cap, forget_to):
    torch.manual_seed(depth)
    cfg = MemoryConfig(
        memory_depth=depth,
        memory_chunk=1,
        memory_momentum=momentum,
        memory_forget=forget,
        memory_max_write=cap,
        memory_forget_to=forget_to,
    )
    mem = NeuralMemory(8, cfg).double()
    x = torch.randn(2, 12, 8, dtype=torch.double)
    y, state = mem(x)
    y_ref, state_ref = mem.reference_forward(x)  # autograd gradients, one token at a time
    assert torch.allclose(y, y_ref, atol=1e-12)
    for s, r in zip(state, state_ref):
        assert torch.allclose(s, r, atol=1e-12)
    mem.cfg.memory_chunk = 4  # gradients at chunk-start memories: a different, real form
    y4, state4 = mem(x)
    assert not torch.allclose(y4, y, atol=1e-6)
    y4_ref, state4_ref = mem.reference_forward(x, chunk=4)  # the closed-form scan == the loop
    assert torch.allclose(y4, y4_ref, atol=1e-12)
    for s, r in zip(state4, state4_ref):
        assert torch.allclose(s, r, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 4])
def test_each_write_is_bounded_and_counted(chunk):
    """No token's write theta_t grad l_t exceeds memory_max_write: with neither momentum nor
    forgetting, W_t - W_{t-1} is that write, so the bound is visible in the weights."""
    torch.manual_seed(3)
    cfg = MemoryConfig(
        memory_chunk=chunk, memory_momentum=False, memory_forget=False, memory_max_write=0.05
    )
    mem = NeuralMemory(8, cfg).double().train()
    x = 4 * torch.randn(2, 12, 8, dtype=torch.double)
    state = None
    steps = []
    for t in range(12):
        before = state[:2] if state else [w.expand(2, *w.shape) for w in mem.init_weights]
        _, state = mem(x[:, t : t + 1], state)
        steps.append(sum((a - b).pow(2).sum((-1, -2)) for a, b in zip(state[:2], before)).sqrt())
    steps = torch.stack(steps)
    assert steps.max() <= 0.05 + 1e-12
    assert int(mem.bounded) == int((steps > 0.05 - 1e-9).sum()) > 0
    mem.cfg.memory_max_write = 0.0  # off: the same tokens write more than the cap
    mem.bounded.zero_()
    y, _ = mem(x)
    assert int(mem.bounded) == 0 and float(mem.diagnostics["write_max"]) > 0.05


def test_forgetting_returns_the_memory_to_its_initial_weights_or_to_zero():
    """Without writes (theta 0) and with alpha ~ 1, one token forgets everything: the memory
    is then W_0 (forget_to init) or 0 (zero); a persistent depth-2 memory at 0 is dead."""
    torch.manual_seed(0)
    for to, expected in (("init", 1.0), ("zero", 0.0)):
        mem = NeuralMemory(8, MemoryConfig(memory_forget_to=to, memory_chunk=4)).double()
        with torch.no_grad():
            mem.gates.weight.zero_()
            mem.gates.bias.copy_(torch.tensor([-60.0, -60.0, 60.0]))  # theta, eta ~ 0; alpha 1
        ws = [torch.randn(2, *w.shape, dtype=torch.double) for w in mem.init_weights]
        state = (*ws, *[torch.zeros_like(w) for w in ws], *ws, torch.zeros(2).double())
        _, after = mem(torch.randn(2, 5, 8, dtype=torch.double), state)
        for w, w0 in zip(after[:2], mem.init_weights):
            assert torch.allclose(w, expected * w0.expand_as(w), atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 4])
def test_one_pass_equals_two_halves_with_state_carried(chunk):
    torch.manual_seed(1)
    model = Titans(TitansConfig(d_model=16, n_heads=2, memory_chunk=chunk, window=0), V).eval()
    mem = model.blocks[0].memory
    x = torch.randn(2, 16, 16)
    full, s_full = mem(x)
    a, s_a = mem(x[:, :8])
    b, s_b = mem(x[:, 8:], s_a)
    assert torch.allclose(torch.cat([a, b], 1), full, atol=1e-6)
    for u, v in zip(s_b, s_full):
        assert torch.allclose(u, v, atol=1e-6)


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("chunk", [4, 5])
@pytest.mark.parametrize("pieces", [[3, 13], [7, 9], [1, 5, 2, 8], [16]])
@pytest.mark.parametrize("cap, forget_to", [(10.0, "zero"), (0.02, "init")])
def test_any_split_equals_one_pass(depth, chunk, pieces, cap, forget_to):
    """The chunk grid runs along the stream: calls that end mid-chunk leave the rest of the
    chunk (and its chunk-start memory) in the state, so any split equals one pass; with the
    write bound binding on most tokens and forgetting toward W_0 too."""
    torch.manual_seed(5)
    cfg = MemoryConfig(
        memory_depth=depth, memory_chunk=chunk, memory_max_write=cap, memory_forget_to=forget_to
    )
    mem = NeuralMemory(8, cfg).double()
    x = torch.randn(2, 16, 8, dtype=torch.double)
    # the token-by-token reference continues a carried state the same way
    state = assert_stream_splits(mem, x, pieces, loop_from=3)
    assert float(state[-1][0]) == 16 % chunk  # the position within the chunk


def test_memory_write_scale_zero_is_a_no_op():
    torch.manual_seed(2)
    mem = NeuralMemory(8, MemoryConfig(memory_chunk=4))
    x = torch.randn(2, 8, 8)
    mem.write_scale = 0.0
    _, state = mem(x)
    init = mem.init_state(2)
    for s, i in zip(state, init):
        assert torch.equal(s, i)
    assert int(mem.writes) == 0


def test_outer_gradients_reach_every_memory_parameter():
    torch.manual_seed(3)
    model = Titans(TitansConfig(d_model=16, n_heads=2, memory_chunk=4), V)
    logits, _ = model(tokens(T=12))
    logits.sum().backward()
    for name, p in model.named_parameters():
        if "memory" in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_teach_signal_is_the_gradient_at_the_head_input():
    torch.manual_seed(4)
    B, T, d = 3, 7, 10
    h = torch.randn(B, T, d, requires_grad=True)
    head = torch.nn.Linear(d, V)
    y = torch.randint(0, V, (B, T))
    y[0, :3] = IGNORE  # ignored positions: zero signal, and N counts only active ones
    y[2, 5] = IGNORE
    logits = head(h)
    loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1), ignore_index=IGNORE)
    (grad,) = torch.autograd.grad(loss, h)
    delta = teach_signal(h, logits, y, head.weight)
    assert torch.allclose(delta, grad, atol=1e-7)
    assert delta[0, :3].abs().sum() == 0


def test_teach_scale_schedule_clip_and_gate():
    cfg = TeachConfig(scale=0.5, warmup_steps=4, decay_start=0.5, decay_steps=0.25)
    total = 40  # decay from step 20 over 10 steps
    values = [cfg.scale_at(i, total) for i in (0, 1, 3, 10, 20, 25, 30, 39)]
    assert values == pytest.approx([0.125, 0.25, 0.5, 0.5, 0.5, 0.25, 0.0, 0.0])
    # e_t norms 5, .5, 0.1 and an ignored position (zero error, left out of every statistic)
    err = torch.tensor([[[3.0, 4.0], [0.3, 0.4], [0.06, 0.08], [0.0, 0.0]]])
    active = torch.tensor([[True, True, True, False]])
    out, stats = shape_signal(err, 2.0, TeachConfig(clip=2.0, threshold=0.4), active)
    assert out.norm(dim=-1)[0].tolist() == pytest.approx([2.0, 1.0, 0.0, 0.0])
    assert float(stats["norm"]) == pytest.approx(5.6 / 3)
    assert float(stats["clip_rate"]) == pytest.approx(1 / 3)
    assert float(stats["gate_rate"]) == pytest.approx(2 / 3)
    assert float(stats["scaled_norm"]) == pytest.approx(3.0 / 3)
    with pytest.raises(ConfigError, match="decay_steps"):
        TeachConfig(decay_start=10)


def test_memory_diagnostics_describe_the_last_training_batch():
    torch.manual_seed(0)
    cfg = TitansConfig(d_model=16, n_heads=2, n_layers=2, memory_chunk=4, memory_theta_max=0.2)
    model = Titans(cfg, V).train()
    x = torch.randint(0, V, (3, 12))
    _, state = model(x)
    m = model.inner_metrics()
    for i in range(2):
        assert 0 < m[f"memory/{i}/theta_max"] <= 0.2
        assert m[f"memory/{i}/theta_mean"] <= m[f"memory/{i}/theta_max"]
        assert 0 <= m[f"memory/{i}/alpha_min"] <= m[f"memory/{i}/alpha_mean"] <= 1
        assert 0 <= m[f"memory/{i}/eta_mean"] <= 1 and m[f"memory/{i}/value_norm"] > 0
    # the weight norm is that of the memory the batch ended with (state: W then S then W_c)
    w1, w2 = state[0].detach(), state[1].detach()
    want = float(w1.flatten(1).norm(dim=1).mean() + w2.flatten(1).norm(dim=1).mean())
    assert m["memory/0/weight_norm"] == pytest.approx(want, rel=1e-5)
