"""`optim.kind: muon`: Muon on the hidden matrices (the formula, by hand), AdamW on the rest,
through the CMS periods, the schedule and clipping, and a checkpoint that restores exactly."""

import math

import pytest
import torch
import torch.nn.functional as F

from models.cms import CMSConfig, CMSOptimizer
from models.errors import ConfigError
from models.nested_lstm import NestedLSTM, NestedLSTMConfig
from models.optim import MuonAdamW, OptimConfig, build_optimizer
from models.transformer import Transformer, TransformerConfig
from nlsweep.data.config import DataConfig
from nlsweep.data.load import load_corpus
from nlsweep.training import checkpoint
from nlsweep.training.trainer import Trainer
from nlsweep.training.trial import TrialConfig

NS = (3.4445, -4.775, 2.0315)


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """The quintic Newton-Schulz iteration X <- a X + (b S + c S^2) X, S = X X^T, that Muon
    orthogonalizes its update with, on the wide orientation, in bfloat16 as Muon runs it
    (each product as one fused multiply-add, so the roundings are the same)."""
    a, b, c = NS
    tall = g.shape[0] > g.shape[1]
    x = g.bfloat16().T if tall else g.bfloat16()
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        s = x @ x.T
        x = torch.addmm(x, torch.addmm(s, s, s, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def _batch(i: int, vocab: int = 7):
    g = torch.Generator().manual_seed(i)
    x = torch.randint(0, vocab, (2, 5), generator=g)
    return x, torch.roll(x, -1, dims=1)


def test_muon_steps_match_the_formula_and_adamw_takes_the_rest():
    torch.manual_seed(0)
    model = NestedLSTM(NestedLSTMConfig(d_model=6, d_ff=10), 7)
    groups = model.level_parameters()
    mods = model.level_modules()
    cfg = OptimConfig("muon", lr=0.01, muon_lr=0.05, weight_decay=0.1, schedule="cosine",
                      warmup_steps=1, min_lr=0.001)  # fmt: skip
    steps, periods = 6, {"fast": 1, "medium": 2, "slow": 3}
    cms = CMSOptimizer(
        groups,
        CMSConfig(periods=periods),
        lambda lv, ps, f: build_optimizer(ps, cfg, f, mods[lv]),
        schedule=lambda i: cfg.lr_multiplier(i, steps),
    )
    fast = cms.optimizers["fast"]
    assert isinstance(fast, MuonAdamW)
    muon_ids = {id(p) for p in fast.parts[0].param_groups[0]["params"]}
    # embedding table and the head onto the vocabulary are AdamW's; LSTM and FFN matrices Muon's
    assert id(model.embed.weight) not in muon_ids and id(model.head.weight) not in muon_ids
    assert id(model.lstm.weight_hh_l0) in muon_ids
    assert fast.metrics()["muon_matrices"] == len(muon_ids) == 2
    # every parameter is owned by exactly one of the two optimizers of exactly one level
    owned = [id(p) for opt in cms.optimizers.values() for g in opt.param_groups
             for p in g["params"]]  # fmt: skip
    assert sorted(owned) == sorted(map(id, model.parameters()))
    slow = [p for p in groups["slow"] if p.ndim == 2]
    params = [p for ps in groups.values() for p in ps]
    expected = [p.detach().clone() for p in slow]
    buf = [torch.zeros_like(p) for p in slow]
    pending = [torch.zeros_like(p) for p in slow]
    for i in range(1, steps + 1):
        x, y = _batch(i)
        loss = F.cross_entropy(model(x)[0].reshape(-1, 7), y.reshape(-1))
        grads = dict(zip(map(id, params), torch.autograd.grad(loss, params, retain_graph=True)))
        for k, p in enumerate(slow):
            pending[k] += grads[id(p)]
        with cms.fresh_gradient():
            loss.backward()
        cms.step()
        if i % periods["slow"] == 0:
            rate = cfg.muon_lr * cfg.lr_multiplier(i - 1, steps)
            for k, p in enumerate(slow):
                buf[k] = buf[k].lerp(pending[k], 0.05)  # B <- 0.95 B + 0.05 g
                update = newton_schulz(pending[k].lerp(buf[k], 0.95))  # 0.05 g + 0.95 B
                scale = math.sqrt(max(1.0, p.shape[0] / p.shape[1]))
                expected[k] = expected[k] * (1 - rate * cfg.weight_decay) - rate * scale * update
                pending[k].zero_()
        for p, e in zip(slow, expected):  # bfloat16 rounding of O: ~1% of a step of ~rate
            torch.testing.assert_close(p.detach(), e, atol=2e-4, rtol=0)
    m = cms.metrics()
    assert m["cms/slow/updates"] == 2 and m["optim/slow/muon_matrices"] > 0
    last = cfg.lr_multiplier(steps - 1, steps)
    assert m["optim/slow/lr"] == pytest.approx(cfg.muon_lr * last)  # Muon's group first
    assert m["optim/slow/adamw_lr"] == pytest.approx(cfg.lr * last)


def test_a_model_without_hidden_matrices_runs_on_adamw_alone():
    model = Transformer(TransformerConfig(d_model=8, n_layers=1, n_heads=2, d_ff=16), 9)
    cfg = OptimConfig("muon", lr=0.01, muon_lr=0.02)
    opt = build_optimizer(list(model.embed.parameters()), cfg, 1.0, [model])
    assert len(opt.parts) == 1 and isinstance(opt.parts[0], torch.optim.AdamW)


@pytest.mark.parametrize(
    ("raw", "key", "fragment"),
    [
        ({"kind": "muon"}, "muon_lr", "a positive learning rate for Muon's matrices"),
        ({"kind": "delta_adam", "muon_lr": 0.02}, "muon_lr", "0 unless kind is muon"),
        ({"kind": "adam", "muon_lr": 0.02}, "muon_lr", "kind adam would ignore it"),
    ],
)
def test_muon_settings_name_their_key(raw, key, fragment):
    with pytest.raises(ConfigError) as e:
        OptimConfig(**raw)
    assert e.value.key == key and fragment in e.value.expected


RAW = {
    "model": {"kind": "transformer", "d_model": 16, "n_layers": 2, "n_heads": 2, "d_ff": 32},
    "optim": {
        "kind": "muon",
        "lr": 3e-3,
        "muon_lr": 0.02,
        "schedule": "cosine",
        "warmup_steps": 2,
        "grad_clip": 0.5,
        "weight_decay": 0.01,
    },  # fmt: skip
    "data": {"corpus": "pydoc", "seq_len": 16, "batch_size": 4},
    "train": {"steps": 10, "eval_every": 5, "eval_batches": 2, "seed": 1, "threads": 1},
}


def test_a_muon_trial_trains_clips_and_restores_bit_identical(tmp_path):
    corpus = load_corpus(DataConfig(corpus="pydoc"))
    straight = Trainer(TrialConfig.from_dict(RAW), device=torch.device("cpu"), corpus=corpus)
    full = [{k: v for k, v in m.items() if not k.startswith("perf/")} for m in straight.run()]
    assert full[-1]["optim/fast/muon_matrices"] == 2 * 4  # qkv, out, W_1, W_2 per block
    assert full[-1]["val/bpc"] < full[0]["val/bpc"] and full[-1]["optim/clipped_steps"] > 0
    first = Trainer(TrialConfig.from_dict(RAW), device=torch.device("cpu"), corpus=corpus)
    seen = []
    for m in first.run():
        seen.append({k: v for k, v in m.items() if not k.startswith("perf/")})
        break
    checkpoint.save(first, tmp_path)
    resumed = Trainer(TrialConfig.from_dict(RAW), device=torch.device("cpu"), corpus=corpus)
    checkpoint.restore(resumed, tmp_path)
    rest = [{k: v for k, v in m.items() if not k.startswith("perf/")} for m in resumed.run()]
    assert seen + rest == full
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
