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
