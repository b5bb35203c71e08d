"""Helpers of the state-carry tests: a stream read in pieces, and exact comparisons."""

import torch


def in_pieces(call, x: torch.Tensor, pieces, state=None):
    """`call(x_piece, state) -> (y, state)` over consecutive pieces of `x` along dim 1, the
    state carried from each call to the next: (the outputs joined, the last state)."""
    outs, t = [], 0
    for n in pieces:
        y, state = call(x[:, t : t + n], state)
        outs.append(y)
        t += n
    return torch.cat(outs, 1), state


def assert_same(a, b, atol: float = 1e-12) -> None:
    """Two outputs, or two states (tuples of tensors), equal to `atol`, elementwise."""
    if isinstance(a, torch.Tensor):
        a, b = (a,), (b,)
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert u.shape == v.shape and torch.allclose(u, v, atol=atol, rtol=0)


def assert_stream_splits(mem, x: torch.Tensor, pieces, loop_from: int):
    """A memory read in `pieces` gives the one-pass outputs and state, and its token loop
    (`reference_forward`) continues a state carried from the first `loop_from` tokens to
    the same outputs and state; the state after the pieces is returned."""
    full, s_full = mem(x)
    y, state = in_pieces(mem, x, pieces)
    assert_same(y, full)
    assert_same(state, s_full)
    head, s_head = mem(x[:, :loop_from])
    ref, s_ref = mem.reference_forward(x[:, loop_from:], s_head)
    assert_same(torch.cat([head, ref], 1), full)
    assert_same(s_ref, s_full)
    return state
