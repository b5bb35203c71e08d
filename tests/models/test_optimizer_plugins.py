"""Optimizer kinds come from the same registry as the built-ins: a plugin optimizer (the
Lion example) is validated, built per CMS level, and steps exactly as its formula says."""

import sys

import pytest
import torch

from models.optim import OptimConfig, build_optimizer, optimizer_kinds, register_optimizer
from models.registry import RegistryError
from tests.helpers import NO_GPU, ROOT


@pytest.fixture(scope="module")
def lion():
    sys.path.insert(0, str(ROOT / "examples" / "plugin_lion"))
    import lion as module

    yield module
    sys.path.remove(str(ROOT / "examples" / "plugin_lion"))


def test_the_built_ins_are_registered_kinds():
    assert {"adam", "adamw", "sgd", "delta_sgd", "delta_adam"} <= set(optimizer_kinds())


def test_lion_steps_as_its_formula(lion):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4, 3))
    cfg = OptimConfig(kind="lion", lr=0.01, beta1=0.9, beta2=0.99, weight_decay=0.1)
    opt = build_optimizer([p], cfg)
    theta, m = p.detach().clone(), torch.zeros(4, 3)
    for _ in range(3):
        g = torch.randn(4, 3)
        p.grad = g.clone()
        opt.step()
        c = 0.9 * m + 0.1 * g
        theta = theta - 0.01 * (torch.sign(c) + 0.1 * theta)  # a matrix: it takes decay
        m = 0.99 * m + 0.01 * g
        assert torch.allclose(p.detach(), theta, atol=1e-6, rtol=0)


def test_a_field_lion_would_ignore_is_refused(lion):
    from models.errors import ConfigError

    with pytest.raises(ConfigError, match="momentum: 0 unless kind is sgd or delta_sgd"):
        OptimConfig(kind="lion", momentum=0.9)


def test_a_kind_registered_twice_names_both(lion):
    with pytest.raises(RegistryError, match="optimizer kind lion registered twice: by lion.build"):
        register_optimizer("lion", lambda *a: None)


def test_the_lion_spec_trains_each_level_with_lion(lion):
    from nlsweep.spec import load_spec
    from nlsweep.training import Trainer

    spec = load_spec(ROOT / "examples" / "plugin_lion" / "spec.yaml", available=NO_GPU)
    assert spec.base.optim.kind == "lion" and spec.plan.trials == 4
    t = Trainer(spec.base)
    assert all(type(o).__name__ == "Lion" for o in t.cms.optimizers.values())
    assert list(t.run())[-1]["cms/slow/updates"] == 5
