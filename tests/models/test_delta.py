"""Delta-rule optimizers against the formula W <- W - alpha W (X^T X / N) - lr D."""

import pytest
import torch
from torch import nn

from models.delta import DeltaRule


@pytest.fixture(autouse=True)
def float64():
    """Exact comparisons at 1e-6 need no float32 noise; restored for the other modules."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))


def batch(i):
    g = torch.Generator().manual_seed(10 + i)
    return torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(
        5, 2, generator=g, dtype=torch.float64
    )


def run(model, opt, steps, inputs=None):
    """Train `steps` steps; record each covered layer's inputs per step when asked."""
    for i in range(steps):
        x, y = batch(i)
        h = model[1](model[0](x))
        if inputs is not None:
            inputs.append({0: x.clone(), 2: h.detach().clone()})
        loss = ((model[2](h) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def manual(kind, steps, lr, alpha, momentum=0.0, betas=(0.9, 0.999), eps=1e-8):
    """The formula by hand, on a twin of the model."""
    model = mlp()
    inputs = []
    state = {id(p): {} for p in model.parameters()}
    for i in range(steps):
        x, y = batch(i)
        h = model[1](model[0](x))
        inputs.append({0: x, 2: h.detach()})
        loss = ((model[2](h) - y) ** 2).mean()
        model.zero_grad()
        loss.backward()
        with torch.no_grad():
            for idx, layer in enumerate(model):
                for name, p in layer.named_parameters():
                    st, g = state[id(p)], p.grad
                    if kind == "sgd":
                        if momentum:
                            st["v"] = g.clone() if "v" not in st else momentum * st["v"] + g
                            d = st["v"]
                        else:
                            d = g
                    else:
                        t = st["t"] = st.get("t", 0) + 1
                        st["m"] = betas[0] * st.get("m", 0) + (1 - betas[0]) * g
                        st["v"] = betas[1] * st.get("v", 0) + (1 - betas[1]) * g * g
                        d = (st["m"] / (1 - betas[0] ** t)) / (
                            (st["v"] / (1 - betas[1] ** t)).sqrt() + eps
                        )
                    if name == "weight":
                        X = inputs[-1][idx]
                        new = p - alpha * p @ (X.T @ X / X.shape[0]) - lr * d
                    else:
                        new = p - lr * d
                    p.copy_(new)
    return model


@pytest.mark.parametrize(
    "kind,momentum,alpha",
    [("sgd", 0.0, 0.05), ("sgd", 0.9, 0.05), ("adam", 0.0, 0.05), ("adam", 0.0, 1e-3)],
)
def test_matches_formula(kind, momentum, alpha):
    model = mlp()
    opt = DeltaRule(model.parameters(), [model], kind=kind, lr=0.01, decay_rate=alpha,
                    momentum=momentum)  # fmt: skip
    run(model, opt, 3)
    want = manual(kind, 3, 0.01, alpha, momentum)
    for p, q in zip(model.parameters(), want.parameters()):
        assert torch.allclose(p, q, atol=1e-6, rtol=0), (p - q).abs().max()
    assert opt.last_decay_norm > 0 and len(opt.covered) == 2


def test_zero_decay_is_plain_adam():
    a, b = mlp(), mlp()
    run(a, DeltaRule(a.parameters(), [a], kind="adam", lr=0.01, decay_rate=0.0), 4)
    run(b, torch.optim.Adam(b.parameters(), lr=0.01), 4)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-10)


def test_decay_without_captured_inputs_raises():
    model = mlp()
    opt = DeltaRule(model.parameters(), [model], kind="adam", lr=0.01, decay_rate=0.1)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match="no inputs were captured for a \\(3, 4\\) matrix"):
        opt.step()


@pytest.mark.parametrize("modules", ["none", "other"])
def test_decay_covering_no_matrix_raises_when_built(modules):
    # Built directly with no module (or another model's): no weight it owns is covered,
    # so it would run as plain Adam with decay_rate silently ignored.
    model, other = mlp(), mlp()
    given = [] if modules == "none" else [other]
    with pytest.raises(ValueError, match="decay_rate 0.1 but none of its parameters"):
        DeltaRule(model.parameters(), given, kind="adam", lr=0.01, decay_rate=0.1)
    # decay 0 covering nothing is the documented control (the plain update), not an error
    DeltaRule(model.parameters(), given, kind="adam", lr=0.01, decay_rate=0.0)


def test_evaluation_does_not_capture():
    model = mlp()
    opt = DeltaRule(model.parameters(), [model], kind="sgd", lr=0.01, decay_rate=0.1)
    x, _ = batch(0)
    with torch.no_grad():
        model(x)
    model.eval()
    model(x)
    assert all("xtx" not in opt.state[w] for w in (model[0].weight, model[2].weight))
    model.train()
    model(x)
    model(x)  # inputs accumulate until the next step
    opt.flush_inputs()  # what the trainer does after every backward pass
    assert opt.state[model[0].weight]["n"] == 10
    assert torch.allclose(opt.state[model[0].weight]["xtx"], 2 * x.T @ x)
