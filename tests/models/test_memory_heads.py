"""`model.memory_heads`: H memories side by side, each its own gates and W_0; one head is
today's memory."""

import pytest
import torch

from models.errors import ConfigError
from models.titans import Titans, TitansConfig
from models.titans_memory import MemoryConfig, NeuralMemory


class Given(torch.nn.Module):
    """A layer that returns a fixed tensor: head j's gate logits, whatever its input."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = value

    def forward(self, _x):
        return self.value


def heads_memory(H: int, depth: int = 2, chunk: int = 4, **kw) -> NeuralMemory:
    torch.manual_seed(7)
    cfg = MemoryConfig(memory_depth=depth, memory_chunk=chunk, memory_heads=H, **kw)
    return NeuralMemory(8, cfg).double()


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("gates", ["token", "chunk"])
def test_each_head_is_a_one_head_memory_on_its_slice(depth, gates):
    """Head j of an H-head memory equals a one-head memory of width d/H given head j's
    slices of k, v, q and of the gates, and head j's rows of W_0."""
    H, d = 2, 8
    mem = heads_memory(H, depth, memory_gates=gates, memory_forget_to="init", memory_max_write=0.5)
    with torch.no_grad():
        mem.out.weight.copy_(torch.eye(d, dtype=torch.double))  # the read-outs themselves
    x = torch.randn(3, 11, d, dtype=torch.double)
    y, state = mem(x)
    k, v, q = mem.proj(x).chunk(3, dim=-1)
    g = mem.gates(x)
    dh = d // H
    for j in range(H):
        one = NeuralMemory(
            dh,
            MemoryConfig(
                memory_depth=depth,
                memory_chunk=4,
                memory_gates=gates,
                memory_forget_to="init",
                memory_max_write=0.5,
            ),  # fmt: skip
        ).double()
        with torch.no_grad():
            for w1, wh, (r, _) in zip(one.init_weights, mem.init_weights, mem.shapes):
                w1.copy_(wh[j * r : (j + 1) * r])
            one.out.weight.copy_(torch.eye(dh, dtype=torch.double))
        sl = slice(j * dh, (j + 1) * dh)
        kvq = torch.cat([k[..., sl], v[..., sl], q[..., sl]], -1)
        one.proj = torch.nn.Identity()  # its k, v, q are head j's
        one.gates = Given(g[..., 3 * j : 3 * j + 3])
        yj, sj = one(kvq)
        assert torch.allclose(y[..., sl], yj, atol=1e-12, rtol=0)
        for full, part, (r, _) in zip(state[:-1], sj[:-1], mem.shapes * 3):
            assert torch.allclose(full[:, j * r : (j + 1) * r], part, atol=1e-12, rtol=0)


@pytest.mark.parametrize("chunk", [1, 4])
@pytest.mark.parametrize("forget_to", ["zero", "init"])
def test_heads_dual_form_equals_the_token_loop(chunk, forget_to):
    mem = heads_memory(4, chunk=chunk, memory_forget_to=forget_to, memory_max_write=0.05)
    x = torch.randn(2, 10, 8, dtype=torch.double)
    y, state = mem(x)
    y_ref, state_ref = mem.reference_forward(x)
    assert torch.allclose(y, y_ref, atol=1e-12, rtol=0)
    for s, r in zip(state, state_ref):
        assert s.shape == r.shape and torch.allclose(s, r, atol=1e-12, rtol=0)
    assert state[0].shape == (2, 4 * 2, 2)  # rows first: (B, H * rows, cols), d/H = 2


def test_heads_any_split_equals_one_pass_and_rows_are_independent():
    mem = heads_memory(2, memory_forget_to="init")
    x = torch.randn(3, 14, 8, dtype=torch.double)
    full, s_full = mem(x)
    a, s_a = mem(x[:, :5])
    b, s_b = mem(x[:, 5:], s_a)
    assert torch.allclose(torch.cat([a, b], 1), full, atol=1e-12, rtol=0)
    for u, v in zip(s_b, s_full):
        assert torch.allclose(u, v, atol=1e-12, rtol=0)
    x2 = x.clone()
    x2[1] = torch.randn(14, 8, dtype=torch.double)  # only row 1 changes
    other, s_other = mem(x2)
    for r in (0, 2):
        assert torch.allclose(other[r], full[r], atol=1e-14, rtol=0)
        for u, v in zip(s_other, s_full):
            assert torch.allclose(u[r], v[r], atol=1e-14, rtol=0)
    assert not torch.allclose(other[1], full[1])


def test_one_head_is_the_memory_without_the_field():
    """Same parameters (names, shapes, initial draws), so one head trains and checkpoints
    exactly as the memory did before heads existed."""
    torch.manual_seed(3)
    plain = Titans(TitansConfig(d_model=16, n_heads=2, memory_chunk=4), 23)
    torch.manual_seed(3)
    one = Titans(TitansConfig(d_model=16, n_heads=2, memory_chunk=4, memory_heads=1), 23)
    sd_plain, sd_one = plain.state_dict(), one.state_dict()
    assert {k: v.shape for k, v in sd_plain.items()} == {k: v.shape for k, v in sd_one.items()}
    assert all(torch.equal(sd_plain[k], sd_one[k]) for k in sd_plain)
    ids = torch.randint(0, 23, (2, 12))
    assert torch.equal(plain(ids)[0], one(ids)[0])
    four = Titans(TitansConfig(d_model=16, n_heads=2, memory_chunk=4, memory_heads=4), 23)
    assert four.blocks[0].memory.gates.out_features == 12
    assert four.blocks[0].memory.init_weights[0].shape == (16, 4)  # 4 heads of 4 x 4
    logits, state = four(ids)
    assert logits.shape == (2, 12, 23) and state[0].shape == (2, 16, 4)


def test_heads_must_divide_the_widths():
    with pytest.raises(ConfigError, match="memory_heads"):
        TitansConfig(d_model=16, n_heads=2, memory_heads=3)
    with pytest.raises(ConfigError, match="memory_heads"):
        TitansConfig(d_model=16, n_heads=2, memory_heads=4, memory_hidden=6)
    with pytest.raises(ConfigError, match="memory_heads"):
        TitansConfig(d_model=16, n_heads=2, memory_heads=0)
