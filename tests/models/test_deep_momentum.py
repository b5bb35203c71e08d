"""Deep momentum for the CMS chain (`cms.inner_optimizer: deep_momentum`): the memory's step
against its objective under autograd, the chain against its definition written out, the
classic momentum it reduces to, rows, stream splits, the trainer and the refusals."""

import pytest
import torch

from models.cms import CMSConfig
from models.deep_momentum import deep_momentum_step, objective
from models.errors import ConfigError
from models.hope import HopeAttention, HopeAttentionConfig
from models.teach import IGNORE, TeachConfig
from tests.models.streams import assert_same, in_pieces

V = 19
torch.set_default_dtype(torch.float32)


def test_one_step_is_gradient_descent_on_the_dot_product_objective():
    """phi_k = phi_0 + mu (phi_(k-1) - phi_0) - eta grad L2(phi_(k-1); u), with the gradient
    taken by autograd in float64, and the read is m_(phi_k)(u)."""
    g = torch.Generator().manual_seed(0)
    n, r, c, h, mu, eta = 3, 5, 4, 6, 0.7, 0.3

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    u, b, a1, a2, a1_0 = rand(n, r, c), rand(n, r, c), rand(n, h, c), rand(n, c, h), rand(h, c)
    u[1, 2] = 0  # a zero gradient row: a zero key, no NaN
    phi = [t.clone().requires_grad_(True) for t in (b, a1, a2)]
    grads = torch.autograd.grad(objective(u, *phi), phi)
    zero = torch.zeros_like(b)
    want = [p0 + mu * (p - p0) - eta * gr for p, p0, gr in zip((b, a1, a2), (zero, a1_0, 0), grads)]
    read, *got, share = deep_momentum_step(u, b, a1, a2, a1_0, mu, eta)
    for w, x in zip(want, got):
        assert torch.allclose(w, x, atol=1e-12, rtol=0)
    key = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    deep = torch.tanh(key @ want[1].transpose(1, 2)) @ want[2].transpose(1, 2) / h
    assert torch.allclose(read, want[0] + deep, atol=1e-12, rtol=0)
    assert torch.allclose(share, deep.flatten(1).norm(dim=1) / read.flatten(1).norm(dim=1))
    assert not torch.isnan(read).any() and (share > 0).all()


def make(deep=4, eta=1.0, periods=(2, 4), chunk=0, mu=0.5, zero_keys=False, seed=4):
    torch.manual_seed(seed)
    extra = {"inner_optimizer": "deep_momentum", "deep_momentum_hidden": deep,
             "deep_momentum_lr": eta} if deep else {}  # fmt: skip
    cms = CMSConfig(token_periods=list(periods), inner_lr=0.05, inner_momentum=mu,
                    inner_chunk=chunk, **extra)  # fmt: skip
    cfg = HopeAttentionConfig(d_model=16, n_heads=2, n_layers=1, d_ff=32)
    model = HopeAttention(cfg, V, cms, TeachConfig()).double()
    with torch.no_grad():
        for name, t in model.chain.named_buffers():
            if name.startswith("keys") and zero_keys:
                t.zero_()
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def data(B=2, T=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)
    y[0, 5] = IGNORE
    return x, y


def test_with_a_zero_key_layer_and_unit_step_it_is_classic_momentum():
    x, y = data()
    model = make(zero_keys=True)
    classic = make(deep=0)
    missing, unexpected = classic.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(k.startswith(("chain.keys", "chain.deep")) for k in unexpected)
    deep, state = model(x, targets=y)
    ref, s_ref = classic(x, targets=y)
    assert torch.allclose(deep, ref, atol=1e-12, rtol=0)
    n = model.chain.stride
    for i in range(2):  # dW, M (= B), G of both weights agree; the deep part stays 0
        for k in range(6):
            assert torch.allclose(state[n * i + k], s_ref[6 * i + k], atol=1e-12, rtol=0)
        assert state[n * i + 7].abs().sum() == 0 and state[n * i + 9].abs().sum() == 0
    model.load_state_dict(make().state_dict())  # the same weights with a random key layer
    with_keys, _ = model(x, targets=y)
    assert not torch.allclose(with_keys, ref, atol=1e-6)  # the deep part acts


@pytest.mark.parametrize(("chunk", "eta"), [(0, 1.0), (8, 0.5)])
def test_chain_equals_its_definition_written_with_autograd(chunk, eta):
    """Each segment read with the fast weights of its start, every inner gradient taken there
    by autograd, and each level step done by gradient descent on the momentum memory's
    objective (autograd again), float64."""
    model = make(eta=eta, chunk=chunk)
    x, y = data()
    got, s_got = model(x, targets=y)
    chain, n, h, mu = model.chain, model.chain.stride, 4, 0.5
    hid, _ = model.body(x)
    hid = hid.detach()
    fast = [[t.clone() for t in chain.init_state(2, "cpu", torch.float64)[n * i : n * i + n]]
            for i in range(2)]  # fmt: skip
    seg = chunk or 2
    want = []
    for c in range(0, 16, seg):
        leaves = [f[k].clone().requires_grad_(True) for f in fast for k in (0, 3)]
        out = hid[:, c : c + seg]
        for i, blk in enumerate(chain.blocks):
            out, _ = blk(out, leaves[2 * i], leaves[2 * i + 1])
        logits = model.head(model.norm_out(out))
        want.append(logits.detach())
        losses = torch.nn.functional.cross_entropy(
            logits.reshape(-1, V), y[:, c : c + seg].reshape(-1), ignore_index=IGNORE,
            reduction="none",
        ).view(2, seg)  # fmt: skip
        for s in range(0, seg, 2):  # the fastest period's windows, in order
            gs = torch.autograd.grad(losses[:, s : s + 2].sum(), leaves, retain_graph=True)
            for i, f in enumerate(fast):
                f[2], f[5] = f[2] + gs[2 * i], f[5] + gs[2 * i + 1]
            for i, (p, f) in enumerate(zip(chain.periods, fast)):
                if (c + s + 2) % p:
                    continue
                for dw, m, g, k, v, j in ((0, 1, 2, 6, 7, 1), (3, 4, 5, 8, 9, 2)):
                    a1_0 = getattr(chain, f"keys{i}_{j}")
                    phi = [f[m].clone().requires_grad_(True), f[k].clone().requires_grad_(True),
                           f[v].clone().requires_grad_(True)]  # fmt: skip
                    grads = torch.autograd.grad(objective(f[g], *phi), phi)
                    f[m] = mu * f[m] - eta * grads[0]
                    f[k] = a1_0 + mu * (f[k] - a1_0) - eta * grads[1]
                    f[v] = mu * f[v] - eta * grads[2]
                    key = f[g] / f[g].norm(dim=-1, keepdim=True)
                    read = f[m] + torch.tanh(key @ f[k].transpose(1, 2)) @ f[v].transpose(1, 2) / h
                    f[dw] = f[dw] - 0.05 * read
                    f[g] = torch.zeros_like(f[g])
    assert torch.allclose(got, torch.cat(want, 1), atol=1e-10, rtol=0)
    for i, f in enumerate(fast):
        for k in range(n):
            assert torch.allclose(s_got[n * i + k], f[k], atol=1e-10, rtol=0), (i, k)
    assert chain.updates.tolist() == [8, 4] and (chain.deep_share > 0).all()


def test_any_split_of_a_stream_equals_one_pass_and_rows_are_independent():
    """The chain's state (fast weights, momentum memories, pending sums, clock) carries a
    stream across calls (the attention before it sees one call, so the chain is split)."""
    model = make(periods=(1, 4))
    x, y = data(T=13)
    h = model.body(x)[0].detach()
    chain = model.chain

    def call(piece, state):
        t0 = 0 if state is None else int(state[-1][0])
        return chain(piece, state, model.head, model.norm_out, y[:, t0 : t0 + piece.shape[1]], 1.0)

    full, s_full = call(h, None)
    for pieces in ((5, 8), (3, 1, 9), (1,) * 13):
        got, s = in_pieces(call, h, pieces)
        assert_same(got, full, atol=1e-10)
        assert_same(s, s_full, atol=1e-10)
    alone, _ = model(x[1:], targets=y[1:])
    assert torch.allclose(alone[0], model(x, targets=y)[0][1], atol=1e-12, rtol=0)


def test_the_trainer_logs_that_the_deep_part_acted():
    from nlsweep.data.config import DataConfig
    from nlsweep.data.load import load_corpus
    from nlsweep.training.trainer import Trainer
    from nlsweep.training.trial import TrialConfig

    raw = {
        "model": {"kind": "hope_attention", "d_model": 16, "n_heads": 2, "n_layers": 1,
                  "d_ff": 32},
        "cms": {"token_periods": [1, 4], "inner_lr": 0.5, "inner_momentum": 0.5,
                "inner_optimizer": "deep_momentum", "deep_momentum_hidden": 4},
        "data": {"corpus": "pydoc", "seq_len": 12, "batch_size": 3},
        "train": {"steps": 4, "eval_every": 2, "eval_batches": 2, "seed": 2, "threads": 1,
                  "final_eval": "sampled"},
    }  # fmt: skip
    corpus = load_corpus(DataConfig(corpus="pydoc"))
    t = Trainer(TrialConfig.from_dict(raw), device=torch.device("cpu"), corpus=corpus)
    last = list(t.run())[-1]
    assert last["cms_inner/0_p1/updates"] == 4 * 12 and last["cms_inner/1_p4/updates"] == 12
    assert 0 < last["cms_inner/0_p1/deep_share"] < 1
    assert 0 < last["cms_inner/1_p4/deep_share"] < 1
    assert t.warnings() == {}


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        ({"inner_optimizer": "deep_momentum"}, "deep_momentum_hidden"),
        ({"deep_momentum_hidden": 4}, "deep_momentum_hidden"),
        ({"deep_momentum_lr": 0.5}, "deep_momentum_lr"),
        (
            {
                "inner_optimizer": "deep_momentum",
                "deep_momentum_hidden": 4,
                "deep_momentum_lr": 0.0,
            },
            "deep_momentum_lr",
        ),  # fmt: skip
        ({"inner_optimizer": "adam"}, "inner_optimizer"),
    ],
)
def test_refusals(fields, key):
    with pytest.raises(ConfigError) as e:
        CMSConfig(token_periods=[1, 4], **fields)
    assert e.value.key == key
    with pytest.raises(ConfigError, match="inner_optimizer"):
        CMSConfig(inner_optimizer="deep_momentum", deep_momentum_hidden=4)


# --- the Titans memory with deep momentum (`model.memory_optimizer: deep_momentum`) ---


def memories(depth=2, heads=1, chunk=4, forget_to="init", seed=0):
    from models.deep_memory import DeepMomentumMemory
    from models.titans_memory import MemoryConfig, NeuralMemory

    torch.manual_seed(seed)
    common = {"memory_depth": depth, "memory_chunk": chunk, "memory_heads": heads,
              "memory_forget_to": forget_to, "memory_max_write": 0.5}  # fmt: skip
    deep = DeepMomentumMemory(8, MemoryConfig(**common, memory_optimizer="deep_momentum",
                                              memory_deep_hidden=3)).double()  # fmt: skip
    plain = NeuralMemory(8, MemoryConfig(**common)).double()
    plain.load_state_dict(deep.state_dict(), strict=False)
    return deep, plain


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize(("chunk", "forget_to"), [(1, "zero"), (4, "init")])
def test_memory_with_a_zero_key_layer_is_the_titans_memory(depth, heads, chunk, forget_to):
    deep, plain = memories(depth, heads, chunk, forget_to)
    with torch.no_grad():
        for name, b in deep.named_buffers():
            if name.startswith("deep_keys"):
                b.zero_()
    x = torch.randn(2, 11, 8, dtype=torch.float64)
    y, state = deep(x)
    y_ref, s_ref = plain(x)
    assert_same(y, y_ref)
    assert_same(state[: len(s_ref)], s_ref)
    n = depth  # then A1 (still zero) and A2 (zero: nothing to learn from a zero key)
    assert all(t.abs().sum() == 0 for t in state[len(s_ref) :][n:])
    assert deep.writes == 2 * 11 and deep.deep_share == 0


def test_memory_equals_its_definition_with_autograd():
    """Every token: the gradient of ||M(k_t) - v_t||^2 at the chunk's start memory by
    autograd, the momentum memory stepped on its objective by autograd, W_t formed, read."""
    deep, _ = memories(depth=2, chunk=3)
    x = torch.randn(2, 8, 8, dtype=torch.float64)
    y, state = deep(x)
    with torch.no_grad():
        k, v, q, theta, eta, alpha = deep._inputs(x)
        ws = [w.expand(2, *w.shape).clone() for w in deep.init_weights]
        bs = [torch.zeros_like(w) for w in ws]
        a1s = [getattr(deep, f"deep_keys{j}").expand(2, 3, -1).clone() for j in range(2)]
        a2s = [torch.zeros(2, a.shape[-1], 3, dtype=x.dtype) for a in a1s]
        cs, ys = [w.clone() for w in ws], []
        for t in range(8):
            with torch.enable_grad():
                at = [c.clone().requires_grad_(True) for c in cs]
                loss = (deep.read(at, k[:, t : t + 1]) - v[:, t : t + 1]).pow(2).sum()
                gs = torch.autograd.grad(loss, at)
            size = theta[:, t] * sum(g.pow(2).sum((-1, -2)) for g in gs).sqrt()
            rate = (theta[:, t] * torch.clamp(0.5 / size, max=1.0)).view(2, 1, 1)
            mu, a = eta[:, t].view(2, 1, 1), alpha[:, t].view(2, 1, 1)
            for j in range(2):
                a1_0 = getattr(deep, f"deep_keys{j}")
                with torch.enable_grad():
                    phi = [p.clone().requires_grad_(True) for p in (bs[j], a1s[j], a2s[j])]
                    grads = torch.autograd.grad(objective(gs[j], *phi), phi)
                bs[j] = mu * bs[j] - rate * grads[0]
                a1s[j] = a1_0 + mu * (a1s[j] - a1_0) - rate * grads[1]
                a2s[j] = mu * a2s[j] - rate * grads[2]
                key = gs[j] / gs[j].norm(dim=-1, keepdim=True)
                read = bs[j] + torch.tanh(key @ a1s[j].transpose(1, 2)) @ a2s[j].transpose(1, 2) / 3
                w0 = deep.init_weights[j]
                ws[j] = (1 - a) * ws[j] - read + a * w0
            ys.append(deep.read(ws, q[:, t : t + 1]))
            if (t + 1) % 3 == 0:
                cs = [w.clone() for w in ws]
        want = deep.out(torch.cat(ys, dim=1))
    assert_same(y, want, atol=1e-12)
    assert_same(state[:2], tuple(ws))
    assert_same(state[2:4], tuple(-b for b in bs))
    assert_same(state[7:], (*a1s, *a2s))
    assert 0 < float(deep.deep_share) < 1


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize(
    ("chunk", "forget_to", "cap"),
    [(1, "zero", 0.5), (4, "init", 0.5), (3, "init", 1e-6), (16, "zero", 0)],
)
def test_closed_form_equals_the_token_loop(depth, heads, chunk, forget_to, cap):
    """The segment's closed form (rank-one row sums, reads as products over the segment)
    against the loop that forms every W_t and steps `deep_momentum_step` on it: read-outs,
    state, deep share and every parameter's gradient, for a call from the stream's start
    and one that starts inside a chunk with the state the first left; every write bounded
    (cap 1e-6) and none (0)."""
    deep, _ = memories(depth, heads, chunk, forget_to)
    deep.cfg.memory_max_write = cap
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    later = torch.randn(2, 9, 8, dtype=torch.float64)
    deep.train()
    y, state = deep(x)
    share = deep.deep_share.clone()
    y2, state2 = deep(later, state)
    got = torch.autograd.grad(y.pow(2).sum() + y2.sin().sum(), list(deep.parameters()))
    y_ref, s_ref, share_ref = deep.reference_forward(x)
    y2_ref, s2_ref, share2_ref = deep.reference_forward(later, s_ref)
    want = torch.autograd.grad(y_ref.pow(2).sum() + y2_ref.sin().sum(), list(deep.parameters()))
    assert_same((y, y2), (y_ref, y2_ref), atol=1e-12)
    assert_same(state, s_ref, atol=1e-12)
    assert_same(state2, s2_ref, atol=1e-12)
    assert_same(got, want, atol=1e-10)
    assert torch.allclose(share, share_ref) and torch.allclose(deep.deep_share, share2_ref)
    assert 0 < float(share2_ref) < 1
    if cap == 1e-6:
        assert deep.bounded == 2 * (7 + 9) * heads  # every write bounded, in both calls


def test_the_sigma_loop_s_written_out_backward_is_autograd_s():
    """`_Sigmas`, whose backward is the loop run backwards by hand: against the same loop
    under autograd (values and every input's gradient, float64), with weights above the
    diagonal that it must ignore; and a second derivative is refused, not made up."""
    from models.deep_memory import _Sigmas

    torch.manual_seed(3)
    R, n, h = 3, 6, 4
    pre, q = (torch.randn(R, n, h, dtype=torch.float64, requires_grad=True) for _ in range(2))
    Gp, Gq = (torch.randn(R, n, n, dtype=torch.float64, requires_grad=True) for _ in range(2))

    def loop(pre, q, Gp, Gq):
        sigs, betas = [], []
        for t in range(n):
            p_t = pre[:, t] + sum((Gp[:, t, u, None] * betas[u] for u in range(t)), 0)
            sigs.append(torch.tanh(p_t))
            q_t = q[:, t] + sum((Gq[:, t, u, None] * sigs[u] for u in range(t)), 0)
            betas.append(q_t * (1 - sigs[t] ** 2))
        return torch.stack(sigs, 1), torch.stack(betas, 1)

    w1, w2 = torch.randn(R, n, h, dtype=torch.float64), torch.randn(R, n, h, dtype=torch.float64)
    Gl = [g.tril(-1) for g in (Gp, Gq)]  # the operator reads the strict lower triangles only
    for fn, args in ((loop, (pre, q, *Gl)), (_Sigmas.apply, (pre, q, Gp, Gq))):
        S, B = fn(*args)
        grads = torch.autograd.grad((S * w1).sum() + (B * w2).sum(), (pre, q, Gp, Gq))
        if fn is loop:
            want = (S, B, *grads)
    assert_same((S, B, *grads), want)
    assert torch.autograd.gradcheck(_Sigmas.apply, (pre, q, Gp, Gq))
    S, B = _Sigmas.apply(pre, q, Gp, Gq)
    (g,) = torch.autograd.grad(S.sum(), pre, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        g.sum().backward()


def test_memory_stream_splits_and_rows():
    deep, _ = memories(depth=2, heads=2, chunk=3)
    x = torch.randn(2, 10, 8, dtype=torch.float64)
    full, s_full = deep(x)
    for pieces in ((4, 6), (1, 2, 7), (5, 5)):
        got, s = in_pieces(deep, x, pieces)
        assert_same(got, full)
        assert_same(s, s_full)
    alone, _ = deep(x[1:])
    assert_same(alone[0], full[1])


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ({"memory_optimizer": "deep_momentum"}, "memory_deep_hidden"),
        ({"memory_deep_hidden": 4}, "memory_deep_hidden"),
        (
            {"memory_optimizer": "deep_momentum", "memory_deep_hidden": 4, "memory_gates": "chunk"},
            "memory_optimizer",
        ),  # fmt: skip
        (
            {
                "memory_optimizer": "deep_momentum",
                "memory_deep_hidden": 4,
                "memory_momentum": False,
            },
            "memory_optimizer",
        ),  # fmt: skip
        (
            {
                "memory_optimizer": "deep_momentum",
                "memory_deep_hidden": 4,
                "memory_use": "mac",
                "mac_segment": 8,
            },
            "memory_optimizer",
        ),  # fmt: skip
    ],
)
def test_memory_refusals(model, key):
    from models.titans import TitansConfig

    with pytest.raises(ConfigError) as e:
        TitansConfig(d_model=16, n_heads=2, **model)
    assert e.value.key == key


def test_titans_with_deep_momentum_trains_and_logs_it():
    from nlsweep.data.config import DataConfig
    from nlsweep.data.load import load_corpus
    from nlsweep.training.trainer import Trainer
    from nlsweep.training.trial import TrialConfig

    raw = {
        "model": {"kind": "titans", "d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32,
                  "memory_chunk": 4, "memory_optimizer": "deep_momentum",
                  "memory_deep_hidden": 4, "memory_max_write": 0},
        "data": {"corpus": "pydoc", "seq_len": 12, "batch_size": 3},
        "train": {"steps": 4, "eval_every": 2, "eval_batches": 2, "seed": 2, "threads": 1,
                  "final_eval": "sampled"},
    }  # fmt: skip
    t = Trainer(TrialConfig.from_dict(raw), device=torch.device("cpu"),
                corpus=load_corpus(DataConfig(corpus="pydoc")))  # fmt: skip
    last = list(t.run())[-1]
    assert last["memory/0/writes"] == 4 * 3 * 12
    assert 0 < last["memory/0/deep_share"] < 1
    assert t.warnings() == {}
