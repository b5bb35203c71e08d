"""The outer training loop: schedule, gradient clipping, matrix-only weight decay, tied
embeddings and GPT-2 initialisation, each against its formula."""

import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from models.cms import CMSConfig, CMSOptimizer
from models.errors import ConfigError
from models.nested_lstm import NestedLSTM, NestedLSTMConfig
from models.optim import OptimConfig, build_optimizer
from models.transformer import Transformer, TransformerConfig
from nlsweep.training.trainer import Trainer
from nlsweep.training.trial import TrialConfig
from tests.helpers import ROOT, spec_text


@pytest.mark.parametrize(
    "cfg,steps,expected",
    [
        # warmup lr (i+1)/(W+1), then constant
        (dict(warmup_steps=3), 10, [0.25, 0.5, 0.75, 1, 1, 1]),
        # cosine from step W to S: floor + (1 - floor)(1 + cos(pi r))/2, floor kept after S
        (dict(schedule="cosine", warmup_steps=2, min_lr=0.1), 6,
         [1 / 3, 2 / 3, 1, 0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2, 0.55,
          0.1 + 0.9 * (1 + math.cos(3 * math.pi / 4)) / 2, 0.1, 0.1]),
        (dict(schedule="linear", min_lr=0.2), 4, [1, 0.8, 0.6, 0.4, 0.2, 0.2]),
        # decay_steps shorter than the run
        (dict(schedule="linear", decay_steps=2), 10, [1, 0.5, 0, 0]),
    ],
)  # fmt: skip
def test_lr_multiplier_matches_the_formula(cfg, steps, expected):
    c = OptimConfig(kind="adamw", lr=1.0, **cfg)
    got = [c.lr_multiplier(i, steps) for i in range(len(expected))]
    assert got == pytest.approx(expected)


@pytest.mark.parametrize(
    "raw,key,fragment",
    [
        ({"min_lr": 1e-4}, "optim.min_lr", "0 unless schedule is cosine or linear"),
        ({"schedule": "cosine", "min_lr": 1.0}, "optim.min_lr", "a value in [0, lr"),
        ({"decay_steps": 5}, "optim.decay_steps", "0 unless schedule"),
        ({"schedule": "cosine", "warmup_steps": 8}, "optim.warmup_steps", "< decay_steps (8"),
        ({"schedule": "cosine", "warmup_steps": 3, "decay_steps": 2}, "optim.decay_steps",
         "warmup_steps (3) < decay_steps (2"),
        ({"warmup_steps": 9}, "optim.warmup_steps", "at most train.steps (8)"),
        ({"grad_clip": -1}, "optim.grad_clip", ">= 0"),
        ({"schedule": "step"}, "optim.schedule", "one of"),
    ],
)  # fmt: skip
def test_bad_outer_loop_settings_name_their_key(raw, key, fragment):
    base = {
        "model": {"kind": "transformer"},
        "optim": {"kind": "adamw", "lr": 1e-3, **raw},
        "train": {"steps": 8},
    }
    with pytest.raises(ConfigError) as e:
        TrialConfig.from_dict(base)
    assert e.value.key == key and fragment in e.value.expected, str(e.value)


def _batch(step, vocab=7):
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randint(0, vocab, (3, 5), generator=g)
    return x, torch.randint(0, vocab, (3, 5), generator=g)


def test_sgd_with_schedule_and_clip_matches_the_formula():
    """Each step's own gradient is clipped to the global norm c, then summed into a slow
    level's chunk; a level stepping at clock i moves by lr_l s(i-1) times that sum."""
    torch.manual_seed(0)
    model = NestedLSTM(NestedLSTMConfig(d_model=6, d_ff=10), 7)
    groups = model.level_parameters()
    periods, lr, clip, steps = {"fast": 1, "medium": 2, "slow": 3}, 0.05, 1.6, 12
    optim = OptimConfig("sgd", lr, schedule="cosine", warmup_steps=2, min_lr=0.01, grad_clip=clip)
    cms = CMSOptimizer(
        groups,
        CMSConfig(periods=periods),
        lambda lv, ps, f: build_optimizer(ps, optim, f),
        schedule=lambda i: optim.lr_multiplier(i, steps),
        grad_clip=clip,
    )
    params = [p for ps in groups.values() for p in ps]
    expected = {lv: [p.detach().clone() for p in ps] for lv, ps in groups.items()}
    pending = {lv: [torch.zeros_like(p) for p in ps] for lv, ps in groups.items()}
    clipped = 0
    for i in range(1, steps + 1):
        x, y = _batch(i)
        loss = F.cross_entropy(model(x)[0].reshape(-1, 7), y.reshape(-1))
        grads = torch.autograd.grad(loss, params, retain_graph=True)
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
        scale = min(1.0, clip / (float(norm) + 1e-6))
        clipped += float(norm) > clip
        it = iter(grads)
        for lv, ps in groups.items():
            for k in range(len(ps)):
                pending[lv][k] += scale * next(it)
        with cms.fresh_gradient():
            loss.backward()
        cms.step()
        for lv, ps in groups.items():
            if i % periods[lv] == 0:
                rate = lr * optim.lr_multiplier(i - 1, steps)
                for k in range(len(ps)):
                    expected[lv][k] -= rate * pending[lv][k]
                    pending[lv][k].zero_()
                assert cms.optimizers[lv].param_groups[0]["lr"] == pytest.approx(rate)
            for p, e in zip(ps, expected[lv]):
                assert torch.allclose(p.detach(), e, atol=1e-6), (i, lv)
    m = cms.metrics()
    assert 0 < clipped < steps, "the test should see steps on both sides of the bound"
    assert m["optim/clip_rate"] == pytest.approx(clipped / steps)
    assert m["optim/clipped_steps"] == clipped and m["optim/grad_norm"] > 0
    assert m["optim/slow/lr"] == pytest.approx(lr * optim.lr_multiplier(steps - 1, steps))
    assert cms.metrics()["optim/clip_rate"] == 0.0  # a window per evaluation
    assert cms.warnings() == {}


def test_a_clip_that_never_binds_is_a_warning():
    model = NestedLSTM(NestedLSTMConfig(d_model=4, d_ff=8), 7)
    optim = OptimConfig("adam", 1e-3, grad_clip=1e6)
    cms = CMSOptimizer(
        model.level_parameters(), CMSConfig(), lambda lv, ps, f: build_optimizer(ps, optim, f),
        grad_clip=optim.grad_clip,
    )  # fmt: skip
    x, y = _batch(1)
    with cms.fresh_gradient():
        F.cross_entropy(model(x)[0].reshape(-1, 7), y.reshape(-1)).backward()
    cms.step()
    (why,) = cms.warnings().values()
    assert why.startswith("never bound in 1 steps: the largest gradient norm was")


def test_a_failed_backward_keeps_the_accumulated_gradients():
    model = NestedLSTM(NestedLSTMConfig(d_model=4, d_ff=8), 7)
    optim = OptimConfig("sgd", 0.1, grad_clip=1.0)
    cms = CMSOptimizer(
        model.level_parameters(), CMSConfig(periods={"fast": 1, "medium": 1, "slow": 2}),
        lambda lv, ps, f: build_optimizer(ps, optim, f), grad_clip=1.0,
    )  # fmt: skip
    x, y = _batch(1)
    with cms.fresh_gradient():
        F.cross_entropy(model(x)[0].reshape(-1, 7), y.reshape(-1)).backward()
    cms.step()
    held = [p.grad.clone() for p in model.level_parameters()["slow"]]
    with pytest.raises(RuntimeError, match="boom"), cms.fresh_gradient():
        raise RuntimeError("boom")
    assert all(torch.equal(p.grad, g) for p, g in zip(model.level_parameters()["slow"], held))


def test_weight_decay_shrinks_matrices_only():
    torch.manual_seed(0)
    model = NestedLSTM(NestedLSTMConfig(d_model=4, d_ff=8), 7)
    params = list(model.parameters())
    opt = build_optimizer(params, OptimConfig("adamw", lr=0.1, weight_decay=0.5))
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.zeros_like(p)  # Adam's own step is then 0: only the decay acts
    opt.step()
    assert any(p.ndim < 2 for p in params) and any(p.ndim >= 2 for p in params)
    for p, b in zip(params, before):
        want = b * (1 - 0.1 * 0.5) if p.ndim >= 2 else b
        assert torch.allclose(p.detach(), want), p.shape


def test_tied_embeddings_share_one_matrix_that_both_uses_train():
    cfg = TransformerConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, tie_embeddings=True)
    untied = Transformer(TransformerConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32), 11)
    model = Transformer(cfg, 11)
    assert model.head.weight is model.embed.tok.weight
    n = sum(p.numel() for p in model.parameters())
    assert n == sum(p.numel() for p in untied.parameters()) - 11 * 16
    (fast,) = model.level_parameters().values()
    assert sum(p is model.head.weight for p in fast) == 1
    untied.load_state_dict(model.state_dict())  # the same values, in two matrices
    x = torch.randint(0, 11, (2, 5))
    for m in (model, untied):
        m(x)[0].square().mean().backward()
    both = untied.head.weight.grad + untied.embed.tok.weight.grad
    assert torch.allclose(model.head.weight.grad, both, atol=1e-7)


def test_gpt2_init_scales_residual_projections_by_depth():
    torch.manual_seed(0)
    n_layers = 8
    cfg = TransformerConfig(d_model=256, n_layers=n_layers, n_heads=4, d_ff=1024, init="gpt2",
                            positions="learned")  # fmt: skip
    model = Transformer(cfg, 300).requires_grad_(False)
    block = model.blocks[0]
    assert float(block.attn.qkv.weight.std()) == pytest.approx(0.02, rel=0.03)
    assert float(block.mlp.w1.weight.std()) == pytest.approx(0.02, rel=0.03)
    residual = 0.02 / math.sqrt(2 * n_layers)
    assert float(block.attn.out.weight.std()) == pytest.approx(residual, rel=0.03)
    assert float(block.mlp.w2.weight.std()) == pytest.approx(residual, rel=0.03)
    assert float(model.embed.tok.weight.std()) == pytest.approx(0.02, rel=0.03)
    assert float(model.embed.pos.weight.std()) == pytest.approx(0.02, rel=0.03)
    assert not model.head.bias.any() and not block.mlp.w2.bias.any()
    torch.manual_seed(0)  # the default keeps PyTorch's initialisation, bit for bit
    plain = Transformer(TransformerConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64), 50)
    torch.manual_seed(0)
    same = Transformer(TransformerConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, init="torch"),
                       50)  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), same.parameters()))


def test_trainer_logs_the_schedule_and_the_clip():
    from nlsweep.data.load import load_corpus

    raw = {
        "model": {"kind": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32,
                  "tie_embeddings": True, "init": "gpt2"},
        "optim": {"kind": "adamw", "lr": 1e-2, "weight_decay": 0.1, "schedule": "cosine",
                  "warmup_steps": 2, "min_lr": 1e-3, "grad_clip": 0.05},
        "data": {"corpus": "pydoc", "seq_len": 16, "batch_size": 4},
        "train": {"steps": 6, "eval_every": 3, "eval_batches": 1, "threads": 1},
    }  # fmt: skip
    cfg = TrialConfig.from_dict(raw)
    t = Trainer(cfg, device=torch.device("cpu"), corpus=load_corpus(cfg.data))
    first, last = list(t.run())
    assert first["optim/fast/lr"] == pytest.approx(1e-2 * cfg.optim.lr_multiplier(2, 6))
    assert last["optim/fast/lr"] == pytest.approx(1e-2 * cfg.optim.lr_multiplier(5, 6))
    assert cfg.optim.lr_multiplier(6, 6) == pytest.approx(0.1)  # the floor, at decay_steps
    assert first["optim/clip_rate"] == 1.0 and last["optim/clipped_steps"] == 6.0
    assert first["optim/grad_norm"] > 0.05
    assert t.warnings() == {}


def test_smoke_shrinks_the_schedule_with_the_run(write_spec):
    from nlsweep.spec import load_spec

    base = yaml.safe_load((ROOT / "search_spaces" / "shakespeare_char.yaml").read_text())
    text = spec_text({"base/optim/decay_steps": 1500}, base=base)
    spec = load_spec(write_spec(text), smoke=True, available={"CPU": 2.0, "GPU": 0.0})
    o, t = spec.base.optim, spec.base.train
    assert (t.steps, o.warmup_steps, o.decay_steps) == (20, 1, 15)
    full = load_spec(write_spec(text), available={"CPU": 2.0, "GPU": 0.0}).base
    assert (full.train.steps, full.optim.warmup_steps, full.optim.decay_steps) == (2000, 100, 1500)


def test_smoke_keeps_reporting_a_bad_step_count(write_spec):
    from nlsweep.spec import SpecError, load_spec

    base = yaml.safe_load((ROOT / "search_spaces" / "shakespeare_char.yaml").read_text())
    text = spec_text({"base/train/steps": -5}, base=base)
    with pytest.raises(SpecError) as e:
        load_spec(write_spec(text), smoke=True, available={"CPU": 2.0, "GPU": 0.0})
    assert e.value.key == "base.train.steps" and "a positive integer" in e.value.expected
