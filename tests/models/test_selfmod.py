"""Self-modifying Titans (`hope_selfmod`): exact inner gradients, the batched chunk equals the
token loop, split invariance, row independence and the teach scale's off switch.
(Checkpoint -> restore -> continue is the contract kit's `exact_resume`, run on every kind.)"""

import pytest
import torch

from models.cms import CMSConfig
from models.errors import ConfigError
from models.selfmod import (
    NAMES,
    HopeSelfMod,
    HopeSelfModConfig,
    SelfModMemory,
    apply,
    inner_grads,
)
from models.teach import TeachConfig
from tests.models.streams import assert_stream_splits


def memory(chunk: int, d: int = 8, hidden: int = 0, seed: int = 0) -> SelfModMemory:
    torch.manual_seed(seed)
    cfg = HopeSelfModConfig(d_model=d, n_heads=2, memory_chunk=chunk, memory_hidden=hidden,
                            memory_eta_max=0.5)  # fmt: skip
    mem = SelfModMemory(d, cfg).double()
    with torch.no_grad():  # weights away from their small start, so every term is visible
        for w in mem.init_weights.values():
            w.add_(0.3 * torch.randn_like(w))
    return mem


@pytest.mark.parametrize("name", NAMES)
def test_every_inner_gradient_is_exact_against_autograd(name):
    mem = memory(1, hidden=6)
    B, n = 3, 5
    ws = [w.detach().unsqueeze(0).expand(B, *w.shape).clone() for w in mem.weights0(name)]
    k = torch.randn(B, n, 8, dtype=torch.double)
    target = torch.randn(B, n, ws[1].shape[-2], dtype=torch.double)  # W1 is (B, out, h)
    mine = inner_grads(ws, k, target)
    for t in range(n):
        at = [w.clone().requires_grad_(True) for w in ws]
        loss = (apply(at, k[:, t : t + 1]) - target[:, t : t + 1]).pow(2).sum()
        ref = torch.autograd.grad(loss, at)  # rows are separate: the sum's grad is per row
        for g, r in zip(mine, ref):
            assert torch.allclose(g[:, t], r, atol=1e-13, rtol=0)


@pytest.mark.parametrize("chunk", [1, 3, 4])
def test_the_batched_chunk_equals_the_token_loop(chunk):
    """`forward` computes a chunk's keys, values, gates, targets and gradients in one batch
    and steps token by token; `reference_forward` does everything one token at a time with
    autograd gradients and the preconditioner as a d x d matrix."""
    mem = memory(chunk)
    x = torch.randn(2, 11, 8, dtype=torch.double)
    y, state = mem(x)
    y_ref, state_ref = mem.reference_forward(x)
    assert torch.allclose(y, y_ref, atol=1e-12, rtol=0)
    for s, r in zip(state, state_ref):
        assert torch.allclose(s, r, atol=1e-12, rtol=0)
    assert float(state[-1][0]) == 11 % chunk


def test_chunking_is_a_different_rule_not_a_rounding():
    x = torch.randn(2, 12, 8, dtype=torch.double)
    y1, _ = memory(1)(x)
    y4, _ = memory(4)(x)
    assert (y1 - y4).abs().max() > 1e-4


@pytest.mark.parametrize("pieces", [[3, 13], [4, 12], [1, 5, 2, 8], [16]])
def test_any_split_equals_one_pass(pieces):
    mem = memory(4)
    x = torch.randn(2, 16, 8, dtype=torch.double)
    assert_stream_splits(mem, x, pieces, loop_from=6)  # the loop continues mid-chunk too


def test_rows_are_independent():
    mem = memory(4)
    x = torch.randn(3, 10, 8, dtype=torch.double)
    y, s = mem(x)
    x2 = x.clone()
    x2[0] = torch.randn(10, 8, dtype=torch.double)
    y2, s2 = mem(x2)
    alone, s_alone = mem(x[1:2])
    assert torch.allclose(y[1:], y2[1:], atol=1e-14, rtol=0)
    assert torch.allclose(y[1:2], alone, atol=1e-14, rtol=0)
    for a, b in zip(s, s_alone):
        assert torch.allclose(a[1:2], b, atol=1e-14, rtol=0)


def test_every_memory_writes_and_scale_zero_writes_nothing():
    mem = memory(2)
    x = torch.randn(2, 8, 8, dtype=torch.double)
    _, state = mem(x)
    half = (len(state) - 1) // 2
    start = mem.init_state(2)
    assert all(not torch.allclose(a, b) for a, b in zip(state[:half], start[:half]))
    mem.write_scale = 0.0
    _, frozen = mem(x)
    for a, b in zip(frozen[:half], start[:half]):
        assert torch.equal(a, b)


def test_hope_selfmod_trains_every_parameter_and_counts_writes():
    torch.manual_seed(0)
    cfg = HopeSelfModConfig(d_model=16, n_heads=2, memory_chunk=4)
    model = HopeSelfMod(cfg, 23, CMSConfig(token_periods=[2, 4], inner_lr=0.05), TeachConfig())
    ids = torch.randint(0, 23, (2, 16))
    logits, state = model(ids, targets=ids)
    torch.nn.functional.cross_entropy(logits.reshape(-1, 23), ids.reshape(-1)).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert len(state) == len(model.state_names)
    metrics = model.inner_metrics()
    assert metrics["memory/0/writes"] == 32 and metrics["memory/1/update_norm"] > 0
    assert 0 < metrics["memory/0/eta_mean"] < cfg.memory_eta_max


def test_bad_settings_are_refused():
    for kw, key in [
        ({"memory_chunk": 0}, "memory_chunk"),
        ({"memory_eta_max": 0}, "memory_eta_max"),
    ]:
        with pytest.raises(ConfigError, match=key):
            HopeSelfModConfig(d_model=16, n_heads=2, **kw)
