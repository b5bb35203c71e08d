"""Self-modifying Titans (`hope_selfmod`): exact inner gradients, the batched chunk equals the
token loop, split invariance, row independence and the teach scale's off switch.
(Checkpoint -> restore -> continue is the contract kit's `exact_resume`, run on every kind.)"""

import math

import pytest
import torch
import torch.nn.functional as F

from models.cms import CMSConfig
from models.errors import ConfigError
from models.selfmod import (
    NAMES,
    HopeSelfMod,
    HopeSelfModConfig,
    SelfModMemory,
    apply,
    factors,
    inner_grads,
    write_sizes,
)
from models.teach import TeachConfig
from tests.models.streams import assert_stream_splits


def memory(
    chunk: int, d: int = 8, hidden: int = 0, seed: int = 0, cap: float = 0.0
) -> SelfModMemory:
    torch.manual_seed(seed)
    cfg = HopeSelfModConfig(d_model=d, n_heads=2, memory_chunk=chunk, memory_hidden=hidden,
                            memory_eta_max=0.5, memory_max_write=cap)  # fmt: skip
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


def test_each_writes_size_is_its_gradients_norm_times_the_rate():
    mem = memory(1, hidden=6)
    B, n = 3, 5
    k = F.normalize(torch.randn(B, n, 8, dtype=torch.double), dim=-1)
    eta = torch.rand(B, n, dtype=torch.double)
    fs, ref = {}, []
    for name in NAMES:
        ws = [w.detach().unsqueeze(0).expand(B, *w.shape) for w in mem.weights0(name)]
        target = torch.randn(B, n, ws[1].shape[-2], dtype=torch.double)
        fs[name] = factors(ws, k, target)
        grads = inner_grads(ws, k, target)  # exact (the test above)
        ref.append(sum(g.pow(2).sum((-1, -2)) for g in grads).sqrt() * eta)
    assert torch.allclose(write_sizes(fs, k, eta), torch.stack(ref, -1), atol=1e-13, rtol=0)


@pytest.mark.parametrize("cap", [0.0, 1e-6], ids=["unbounded", "every-write-bounded"])
@pytest.mark.parametrize("chunk", [1, 3, 4])
def test_the_batched_chunk_equals_the_token_loop(chunk, cap):
    """`forward` computes a chunk's keys, values, gates, targets and gradients in one batch
    and steps token by token; `reference_forward` does everything one token at a time with
    autograd gradients and the preconditioner as a d x d matrix; the write bound scales
    each gradient in both."""
    mem = memory(chunk, cap=cap)
    x = torch.randn(2, 11, 8, dtype=torch.double)
    mem.train()
    y, state = mem(x)
    assert int(mem.bounded) == (2 * 11 * len(NAMES) if cap else 0)  # each token, each memory
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


@pytest.mark.parametrize("cap", [0.0, 1e-6], ids=["unbounded", "every-write-bounded"])
@pytest.mark.parametrize("pieces", [[3, 13], [4, 12], [1, 5, 2, 8], [16]])
def test_any_split_equals_one_pass(pieces, cap):
    mem = memory(4, cap=cap)
    x = torch.randn(2, 16, 8, dtype=torch.double)
    assert_stream_splits(mem, x, pieces, loop_from=6)  # the loop continues mid-chunk too


@pytest.mark.parametrize("cap", [0.0, 1e-6], ids=["unbounded", "every-write-bounded"])
def test_rows_are_independent(cap):
    mem = memory(4, cap=cap)
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
        ({"memory_max_write": -1}, "memory_max_write"),
    ]:
        with pytest.raises(ConfigError, match=key):
            HopeSelfModConfig(d_model=16, n_heads=2, **kw)


@pytest.mark.parametrize("cap", [1.0, 0.0], ids=["bounded", "unbounded"])
def test_carried_along_a_stream_the_bound_keeps_hope_selfmod_finite(cap):
    """Each memory's target is its own read of a value another memory made, so a write
    grows the next one: carried along a stream, the unbounded memories reach inf within a
    few batches (the loss NaN at step 4 here). The default bound keeps them finite, the
    model learns, and the counters show that the bound acted."""
    from nlsweep.training.runtime import Diverged
    from tests.training.test_precision import SELFMOD, trainer

    raw = {
        **SELFMOD,
        "model": {**SELFMOD["model"], "memory_max_write": cap},
        "state": {"mode": "persistent"},
    }
    t = trainer(raw, steps=60, eval_every=30)
    if not cap:
        with pytest.raises(Diverged, match="training loss nan"):
            list(t.run())
        return
    hist = list(t.run())
    assert hist[-1]["val/loss"] < hist[0]["val/loss"] < 4.0
    assert hist[-1]["memory/0/bounded"] > 0 and hist[-1]["memory/0/writes"] == 60 * 4 * 16
    assert all(math.isfinite(v) for m in hist for v in m.values())
