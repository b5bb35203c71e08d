"""`model.memory_gates`: momentum and forgetting per token or once per chunk, each against a
hand formula, the dual form against the token loop, and split invariance for both."""

import pytest
import torch

from models.errors import ConfigError
from models.titans_memory import MemoryConfig, NeuralMemory
from tests.models.streams import assert_stream_splits


def linear_memory(gates: str, chunk: int, forget_to: str = "zero") -> NeuralMemory:
    torch.manual_seed(11)
    cfg = MemoryConfig(
        memory_depth=1,
        memory_chunk=chunk,
        memory_gates=gates,
        memory_max_write=0.0,  # no bound: the rate is theta itself
        memory_forget_to=forget_to,
    )
    mem = NeuralMemory(6, cfg).double()
    with torch.no_grad():  # gates far from their initial corners, so each term matters
        mem.gates.bias.copy_(torch.tensor([-1.0, 0.5, -1.0], dtype=torch.double))
    return mem


def hand(mem: NeuralMemory, x: torch.Tensor, per_chunk: bool):
    """The recurrences written out for a linear memory, whose gradient is explicit:
    grad ||k W - v||^2 = 2 k^T (k W - v), every token's taken at its chunk's start W_c.
    Returns each token's W_t and S_t."""
    k, v, _, theta, eta, alpha = (t.detach() for t in mem._inputs(x))
    b = mem.cfg.memory_chunk
    W0 = mem.init_weights[0].detach()
    anchor = W0 if mem.cfg.memory_forget_to == "init" else torch.zeros_like(W0)
    W = W0.expand(x.shape[0], *W0.shape).clone()
    S = torch.zeros_like(W)
    Ws, Ss = [], []
    for c0 in range(0, x.shape[1], b):
        Wc, Sc = W, S  # the chunk's start
        acc = torch.zeros_like(W)
        for t in range(c0, min(c0 + b, x.shape[1])):
            kt, vt = k[:, t : t + 1], v[:, t : t + 1]
            g = 2 * kt.transpose(1, 2) @ (kt @ Wc - vt)
            r = theta[:, t].view(-1, 1, 1)
            if per_chunk:  # gates of the chunk's first token, on the summed write
                acc = acc + r * g
                e, a = eta[:, c0].view(-1, 1, 1), alpha[:, c0].view(-1, 1, 1)
                S = e * Sc - acc
                W = anchor + (1 - a) * (Wc - anchor) + S
            else:
                e, a = eta[:, t].view(-1, 1, 1), alpha[:, t].view(-1, 1, 1)
                S = e * S - r * g
                W = anchor + (1 - a) * (W - anchor) + S
            Ws.append(W)
            Ss.append(S)
    return Ws, Ss


@pytest.mark.parametrize("gates", ["token", "chunk"])
@pytest.mark.parametrize("chunk", [1, 4, 5])
@pytest.mark.parametrize("forget_to", ["zero", "init"])
def test_each_reading_equals_its_hand_formula(gates, chunk, forget_to):
    mem = linear_memory(gates, chunk, forget_to)
    x = torch.randn(2, 13, 6, dtype=torch.double)
    Ws, Ss = hand(mem, x, gates == "chunk")
    # the state after every prefix: W_t, S_t token by token (calls of one token)
    state = None
    for t in range(x.shape[1]):
        _, state = mem(x[:, t : t + 1], state)
        assert torch.allclose(state[0], Ws[t], atol=1e-12, rtol=0), t
        assert torch.allclose(state[1], Ss[t], atol=1e-12, rtol=0), t
    # and the reads y_t = W_t q_t of one pass
    q = mem._inputs(x)[2]
    y, _ = mem(x)
    expected = torch.cat([q[:, t : t + 1] @ Ws[t] for t in range(x.shape[1])], 1)
    assert torch.allclose(y, mem.out(expected), atol=1e-12, rtol=0)


def test_the_readings_agree_at_chunk_one_and_differ_beyond():
    x = torch.randn(2, 16, 6, dtype=torch.double)
    ys = {g: linear_memory(g, 1)(x) for g in ("token", "chunk")}
    for a, b in zip((ys["token"][0], *ys["token"][1]), (ys["chunk"][0], *ys["chunk"][1])):
        assert torch.allclose(a, b, atol=1e-14, rtol=0)
    w_token = linear_memory("token", 8)(x)[1][0]
    w_chunk = linear_memory("chunk", 8)(x)[1][0]
    assert (w_token - w_chunk).norm() > 1e-3 * w_token.norm()


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("chunk", [1, 4])
@pytest.mark.parametrize("cap, forget_to", [(10.0, "zero"), (0.02, "init")])
def test_chunk_gates_dual_form_equals_the_token_loop(depth, chunk, cap, forget_to):
    """The closed form (no loop over tokens) against `reference_forward` (autograd gradients,
    one token at a time), depth 2 and the write bound included."""
    torch.manual_seed(depth)
    cfg = MemoryConfig(
        memory_depth=depth,
        memory_chunk=chunk,
        memory_gates="chunk",
        memory_max_write=cap,
        memory_forget_to=forget_to,
    )
    mem = NeuralMemory(8, cfg).double()
    x = torch.randn(2, 14, 8, dtype=torch.double)
    y, state = mem(x)
    y_ref, state_ref = mem.reference_forward(x)
    assert torch.allclose(y, y_ref, atol=1e-12, rtol=0)
    for s, r in zip(state, state_ref):
        assert torch.allclose(s, r, atol=1e-12, rtol=0)


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("pieces", [[3, 13], [2, 2, 12], [1, 5, 2, 8], [6, 10]])
def test_chunk_gates_any_split_equals_one_pass(depth, pieces):
    """A call that ends inside a chunk leaves its gates already applied in the state; the
    next call adds the rest of the chunk's writes alone."""
    torch.manual_seed(5)
    cfg = MemoryConfig(memory_depth=depth, memory_chunk=4, memory_gates="chunk")
    mem = NeuralMemory(8, cfg).double()
    x = torch.randn(2, 16, 8, dtype=torch.double)
    assert_stream_splits(mem, x, pieces, loop_from=3)  # the loop continues mid-chunk too


def test_an_unknown_reading_is_refused():
    with pytest.raises(ConfigError, match="memory_gates"):
        MemoryConfig(memory_gates="segment").check_memory()
