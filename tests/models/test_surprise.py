"""The surprise objective against a hand computation; detached builds no second-order graph."""

import pytest
import torch
import torch.nn.functional as F

from models.errors import ConfigError
from models.nested_lstm import NestedLSTM, NestedLSTMConfig
from models.surprise import SurpriseConfig, surprise_backward, surprise_loss
from nlsweep.training.trainer import Trainer
from nlsweep.training.trial import TrialConfig


def setup(seed=0, batch=2, seq=5):
    torch.manual_seed(seed)
    model = NestedLSTM(NestedLSTMConfig(d_model=6, d_ff=8), 11)
    x = torch.randint(0, 11, (batch, seq))
    y = torch.randint(0, 11, (batch, seq))
    logits, _, outputs = model.forward_levels(x)
    loss = F.cross_entropy(logits.reshape(-1, 11), y.reshape(-1))
    return model, loss, outputs


@pytest.mark.parametrize("scale,clip", [("none", 0.0), ("tokens", 0.0), ("tokens", 0.05)])
def test_matches_hand_computation(scale, clip):
    model, loss, outputs = setup()
    cfg = SurpriseConfig(weights={"fast": 0.1, "slow": 0.05}, signal_scale=scale, clip=clip)
    aux, stats = surprise_loss(loss, outputs, cfg)
    want = 0.0
    for level, w in cfg.weights.items():
        y = outputs[level]
        (u,) = torch.autograd.grad(loss, [y], retain_graph=True)
        s = u * 10 if scale == "tokens" else u  # N = 2 * 5 tokens
        if clip:
            n = s.norm(dim=-1, keepdim=True)
            s = torch.where(n > clip, s * clip / n, s)
            assert stats[f"surprise/{level}/clip_rate"] == pytest.approx(
                float((n > clip).float().mean()))  # fmt: skip
        per_token = ((y - s) ** 2).sum(-1)  # ||y_t - s u_t||^2
        want = want + w * per_token.mean()
        assert stats[f"surprise/{level}/signal_norm"] == pytest.approx(
            float((u * (10 if scale == "tokens" else 1)).norm(dim=-1).mean()))  # fmt: skip
        assert stats[f"surprise/{level}/output_norm"] == pytest.approx(
            float(y.detach().norm(dim=-1).mean()))  # fmt: skip
    assert float(aux.detach()) == pytest.approx(float(want.detach()), rel=1e-6)
    assert "surprise/medium/aux" not in stats  # weight 0 / absent: not computed


def test_faithful_signal_is_tiny():
    """With a mean loss the faithful signal is O(1/N): the regime pitfall 5 describes."""
    _, loss, outputs = setup(batch=8, seq=32)
    _, s_none = surprise_loss(loss, outputs, SurpriseConfig(weights={"fast": 1.0}))
    _, s_tok = surprise_loss(
        loss, outputs, SurpriseConfig(weights={"fast": 1.0}, signal_scale="tokens")
    )
    assert s_tok["surprise/fast/signal_norm"] == pytest.approx(
        256 * s_none["surprise/fast/signal_norm"])  # fmt: skip
    assert s_none["surprise/fast/signal_norm"] < 0.1 * s_none["surprise/fast/output_norm"]


def test_detached_builds_no_second_order_graph(monkeypatch):
    calls = []
    real = torch.autograd.grad

    def spy(*args, **kwargs):
        calls.append(kwargs.get("create_graph", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", spy)
    model, loss, outputs = setup()
    cfg = SurpriseConfig(weights={"medium": 0.5}, signal_scale="tokens")
    aux, _ = surprise_loss(loss, outputs, cfg)
    assert calls == [False]
    params = list(model.parameters())
    got = real(aux, params, retain_graph=True, allow_unused=True)
    # the same objective with the signal as a constant, by hand
    (u,) = real(loss, [outputs["medium"]], retain_graph=True)
    manual = 0.5 * ((outputs["medium"] - 10 * u.detach()) ** 2).sum(-1).mean()
    want = real(manual, params, retain_graph=True, allow_unused=True)
    for g, w in zip(got, want):
        assert (g is None and w is None) or torch.allclose(g, w, atol=1e-7)


def test_differentiable_keeps_the_second_order_term(monkeypatch):
    calls = []
    real = torch.autograd.grad
    monkeypatch.setattr(
        torch.autograd, "grad", lambda *a, **k: calls.append(k.get("create_graph")) or real(*a, **k)
    )
    model, loss, outputs = setup()
    cfg = SurpriseConfig(weights={"medium": 0.5}, signal_scale="tokens", target="differentiable")
    aux, _ = surprise_loss(loss, outputs, cfg)
    assert calls == [True]
    (u,) = real(loss, [outputs["medium"]], retain_graph=True)
    manual = 0.5 * ((outputs["medium"] - 10 * u.detach()) ** 2).sum(-1).mean()
    head = model.head.weight  # above `medium`: reached only through u's graph
    (g_diff,) = real(aux, [head], retain_graph=True)
    assert real(manual, [head], retain_graph=True, allow_unused=True)[0] is None
    assert g_diff.abs().sum() > 0


def test_loop_applies_it_every_n_steps_and_logs():
    cfg = TrialConfig.from_dict({
        "model": {"kind": "nested_lstm", "d_model": 12, "d_ff": 16},
        "surprise": {"weights": {"fast": 0.05, "medium": 0.05}, "every_n": 2,
                     "signal_scale": "tokens"},
        "data": {"seq_len": 8, "batch_size": 3},
        "train": {"steps": 6, "eval_every": 6, "eval_batches": 1, "threads": 1},
    })  # fmt: skip
    m = list(Trainer(cfg, device=torch.device("cpu")).run())[-1]
    assert m["surprise/steps"] == 3  # steps 1, 3, 5 of 6
    for level in ("fast", "medium"):
        assert m[f"surprise/{level}/aux"] > 0 and m[f"surprise/{level}/signal_norm"] > 0
    assert "surprise/slow/aux" not in m


def test_unknown_level_is_a_config_error():
    with pytest.raises(ConfigError, match="surprise.weights.middle"):
        TrialConfig.from_dict({"model": {"kind": "nested_lstm"},
                               "surprise": {"weights": {"middle": 0.1}}})  # fmt: skip


@pytest.mark.parametrize("level", ["fast", "medium", "slow"])
@pytest.mark.parametrize("scale,clip", [("none", 0.0), ("tokens", 0.05)])
def test_single_pass_equals_two_pass(level, scale, clip):
    """One detached level: the hook path gives the gradients of loss + aux exactly."""
    cfg = SurpriseConfig(weights={level: 0.3}, signal_scale=scale, clip=clip)
    model, loss, outputs = setup()
    aux, want_stats = surprise_loss(loss, outputs, cfg)
    (loss + aux).backward()
    want = [p.grad.clone() for p in model.parameters()]
    model, loss, outputs = setup()
    stats = surprise_backward(loss, outputs, cfg)
    for p, g in zip(model.parameters(), want):
        assert torch.allclose(p.grad, g, atol=1e-7), level
    assert stats == pytest.approx(want_stats)


@pytest.mark.parametrize("target", ["differentiable", "detached"])
def test_clip_gradient_is_the_formulas(target):
    """The parameters' gradients equal autograd of L + w ||y - clip(s u)||^2 / N written out
    in float64: with a differentiable target the clip factor c / ||s u|| is differentiated
    (the factor held constant gives other gradients), with a detached one u is constant."""
    torch.manual_seed(7)
    model = NestedLSTM(NestedLSTMConfig(d_model=6, d_ff=8), 11).double()
    x, y = torch.randint(0, 11, (2, 5)), torch.randint(0, 11, (2, 5))
    cfg = SurpriseConfig(weights={"medium": 0.3}, target=target, signal_scale="tokens", clip=2.0)

    def main_loss():
        state = tuple(t.double() for t in model.init_state(2))
        logits, _, outputs = model.forward_levels(x, state)
        return F.cross_entropy(logits.reshape(-1, 11), y.reshape(-1)), outputs

    loss, outputs = main_loss()
    stats = surprise_backward(loss, outputs, cfg)
    got = [p.grad.clone() for p in model.parameters()]
    assert 0 < stats["surprise/medium/clip_rate"] < 1  # some tokens clipped, some not

    model.zero_grad()
    loss, outputs = main_loss()
    ym = outputs["medium"]
    (u,) = torch.autograd.grad(
        loss, [ym], retain_graph=True, create_graph=target == "differentiable"
    )
    s = u * 10
    n = s.norm(dim=-1, keepdim=True)
    s = torch.where(n > 2.0, s * 2.0 / n, s)
    (loss + 0.3 * ((ym - s) ** 2).sum(-1).mean()).backward()
    want = [p.grad.clone() for p in model.parameters()]
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-12, rtol=1e-9), (a - b).abs().max()
