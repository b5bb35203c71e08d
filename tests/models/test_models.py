"""Nested LSTM ownership and CMS step periods against the notes' formula."""

import pytest
import torch
import torch.nn.functional as F

from models.cms import CMSConfig, CMSOptimizer
from models.common import ConfigError, check_ownership
from models.nested_lstm import NestedLSTM, NestedLSTMConfig
from models.optim import OptimConfig, build_optimizer


def make_cms(groups, periods, optim, lr_scaling="none", accumulate="sum"):
    cfg = CMSConfig(periods=periods, lr_scaling=lr_scaling, accumulate=accumulate)
    return CMSOptimizer(groups, cfg, lambda lv, ps, f: build_optimizer(ps, optim, f))


@pytest.mark.parametrize("norm", ["layernorm", "none"])
@pytest.mark.parametrize("residual", [True, False])
def test_every_parameter_has_exactly_one_owner(norm, residual):
    model = NestedLSTM(NestedLSTMConfig(d_model=8, d_ff=16, norm=norm, residual=residual), 11)
    groups = model.level_parameters()
    check_ownership(model, groups)
    owned = [id(p) for ps in groups.values() for p in ps]
    assert sorted(owned) == sorted(id(p) for p in model.parameters())
    # The embedding and head are stepped (pitfall 2): they belong to the fast level.
    fast = {id(p) for p in groups["fast"]}
    assert id(model.embed.weight) in fast and id(model.head.weight) in fast
    cms = make_cms(groups, {"fast": 1, "medium": 2, "slow": 4}, OptimConfig())
    in_opts = [id(p) for o in cms.optimizers.values() for g in o.param_groups for p in g["params"]]
    assert sorted(in_opts) == sorted(owned)


def test_ownership_check_catches_orphans_and_doubles():
    model = NestedLSTM(NestedLSTMConfig(d_model=4, d_ff=8), 5)
    groups = model.level_parameters()
    with pytest.raises(ValueError, match="owned by no level: head.weight"):
        check_ownership(
            model, {**groups, "fast": [p for p in groups["fast"] if p is not model.head.weight]}
        )
    with pytest.raises(ValueError, match="owned twice"):
        check_ownership(model, {**groups, "slow": groups["slow"] + [model.head.bias]})


def test_cms_levels_must_match_model():
    with pytest.raises(ConfigError, match="one period for each"):
        CMSConfig(periods={"fast": 1, "medium": 2}).check_levels(NestedLSTM.levels)
    with pytest.raises(ConfigError, match="periods.slow"):
        CMSConfig(periods={"fast": 1, "medium": 2, "slow": 0})


def _batch(step, vocab=7):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randint(0, vocab, (3, 5), generator=g), torch.randint(
        0, vocab, (3, 5), generator=g
    )


@pytest.mark.parametrize(
    "lr_scaling,accumulate",
    [("none", "sum"), ("inverse", "sum"), ("inverse_sqrt", "sum"), ("none", "mean"),
     ("inverse", "mean")],
)  # fmt: skip
def test_cms_sgd_matches_accumulated_formula(lr_scaling, accumulate):
    """theta_l <- theta_l - lr_l * (sum or mean of g_l since its last change), only when
    i % C_l == 0, with lr_l = lr * (1, 1/C_l, 1/sqrt(C_l))."""
    torch.manual_seed(0)
    model = NestedLSTM(NestedLSTMConfig(d_model=6, d_ff=10), 7)
    periods, lr = {"fast": 1, "medium": 2, "slow": 3}, 0.05
    groups = model.level_parameters()
    cms = make_cms(groups, periods, OptimConfig("sgd", lr), lr_scaling, accumulate)
    factor = {"none": lambda c: 1.0, "inverse": lambda c: 1.0 / c,
              "inverse_sqrt": lambda c: c**-0.5}[lr_scaling]  # fmt: skip
    assert cms.lr_factors == {lv: pytest.approx(factor(c)) for lv, c in periods.items()}
    for lv, opt in cms.optimizers.items():
        assert opt.param_groups[0]["lr"] == pytest.approx(lr * factor(periods[lv]))
    expected = {lv: [p.detach().clone() for p in ps] for lv, ps in groups.items()}
    pending = {lv: [torch.zeros_like(p) for p in ps] for lv, ps in groups.items()}
    for i in range(1, 13):
        x, y = _batch(i)
        logits, _ = model(x)
        loss = F.cross_entropy(logits.reshape(-1, 7), y.reshape(-1))
        params = [p for ps in groups.values() for p in ps]
        grads = iter(torch.autograd.grad(loss, params, retain_graph=True))
        for lv, ps in groups.items():
            for k in range(len(ps)):
                pending[lv][k] += next(grads)
        loss.backward()
        stepped = cms.step()
        assert stepped == [lv for lv in groups if i % periods[lv] == 0]
        for lv, ps in groups.items():
            c = periods[lv]
            if i % c == 0:
                scale = lr * factor(c) / (c if accumulate == "mean" else 1)
                for k in range(len(ps)):
                    expected[lv][k] -= scale * pending[lv][k]
                    pending[lv][k].zero_()
            for p, e in zip(ps, expected[lv]):
                assert torch.allclose(p.detach(), e, atol=1e-6), (i, lv)
    assert cms.updates == {"fast": 12, "medium": 6, "slow": 4}
    assert cms.metrics()["cms/slow/updates"] == 4.0
    assert cms.last_update_norm["slow"] > 0


def test_cms_state_round_trip_keeps_pending_gradients():
    def make():
        torch.manual_seed(1)
        m = NestedLSTM(NestedLSTMConfig(d_model=4, d_ff=8), 7)
        c = make_cms(m.level_parameters(), {"fast": 1, "medium": 2, "slow": 4},
                     OptimConfig("adam", 0.01))  # fmt: skip
        return m, c

    def step(m, c, i):
        x, y = _batch(i)
        F.cross_entropy(m(x)[0].reshape(-1, 7), y.reshape(-1)).backward()
        c.step()

    m1, c1 = make()
    for i in range(1, 4):
        step(m1, c1, i)
    saved = {"model": m1.state_dict(), "cms": c1.state_dict()}
    assert any(g is not None for g in saved["cms"]["pending_grads"]["slow"])
    m2, c2 = make()
    m2.load_state_dict(saved["model"])
    c2.load_state_dict(saved["cms"])
    for i in range(4, 9):
        step(m1, c1, i)
        step(m2, c2, i)
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    assert c1.updates == c2.updates == {"fast": 8, "medium": 4, "slow": 2}


def test_due_level_without_gradient_raises():
    model = NestedLSTM(NestedLSTMConfig(d_model=4, d_ff=8), 5)
    cms = make_cms(model.level_parameters(), {"fast": 1, "medium": 1, "slow": 1}, OptimConfig())
    with pytest.raises(RuntimeError, match="none of its parameters received a gradient"):
        cms.step()


def test_config_error_survives_pickling():
    """Ray ships a trial's exception to the driver by pickle; the message must survive."""
    import pickle

    e = pickle.loads(pickle.dumps(ConfigError("data.seq_len", "at most 10, got 400000")))
    assert (e.key, e.expected, str(e)) == (
        "data.seq_len",
        "at most 10, got 400000",
        "data.seq_len: at most 10, got 400000",
    )


def test_update_norms_measured_only_before_a_read_equal_those_measured_always():
    """`step(read_at=...)` skips the update-norm measurement (a copy of the weights and a
    reduction) on steps whose value no read sees; every value a read sees is the same."""
    runs = []
    for lazy in (False, True):
        torch.manual_seed(0)
        model = NestedLSTM(NestedLSTMConfig(d_model=8, d_ff=16), 7)
        cms = make_cms(model.level_parameters(), {"fast": 1, "medium": 2, "slow": 4},
                       OptimConfig(kind="adam", lr=1e-2))  # fmt: skip
        reads, every = [], 5  # metrics read at clocks 5, 10 and 12 (the end)
        for i in range(12):
            x, y = _batch(i)
            logits, _ = model(x)
            F.cross_entropy(logits.reshape(-1, 7), y.reshape(-1)).backward()
            read_at = min((i // every + 1) * every, 12)
            cms.step(read_at=read_at if lazy else None)
            if cms.clock == read_at:
                reads.append(dict(cms.last_update_norm))
        runs.append(reads)
    assert runs[0] == runs[1] and len(runs[0]) == 3
    assert all(v > 0 for r in runs[0] for v in r.values())
