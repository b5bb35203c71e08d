"""The CMS chain of the HOPE kinds (models/hope.py): MLP blocks with per-row fast weights,
each stepped in context every C_l tokens by the teach signal.

Notation (shared notes §1, "token periods" reading; `models/teach.py` defines e_t)
    h            output of the attention (hope: attention + memory) blocks, (B, T, d)
    y_0 = h,  y_l = y_{l-1} + MLP_l(LN_l(y_{l-1}))     l = 1 .. L, one CMS level per period
    MLP_l(u)     = (W2_l + dW2_l) gelu((W1_l + dW1_l) u + b1_l) + b2_l
    logits       = W_head LN_out(y_L)
    l_t          the cross-entropy of token t alone (0 where its target is ignored)
    e'_t         its error at the head input, dl_t/d LN_out(y_L), scaled by s(i), clipped, gated
    g_{L,t}      = e'_t J_LN_out(y_L,t)          carried back through the final norm
    g_{l-1,t}    = g_{l,t} + g_{l,t} J_{MLP_l o LN_l}(y_{l-1,t})     through block l
                 so g_{l,t} = s(i) dl_t / dy_{l,t} exactly (without clip or gate)
    G_l         += grad_{dW_l} <MLP_l(LN_l(y_{l-1,t})), g_{l,t}>  = s(i) dl_t / d dW_l
    every C_l tokens of the level's clock:  M_l <- mu M_l + G_l;  dW_l <- dW_l - lr_l M_l;  G_l <- 0
                 (`cms.inner_optimizer: deep_momentum`: M_l is a momentum memory's read,
                 models/deep_momentum.py)
Every block's inner gradient is the exact gradient of the scaled token losses of its period
with respect to its fast weights (tested against autograd in float64); the vector-Jacobian
products are per token and in closed form (no second backward pass). The inner step of a
sequence depends only on its own tokens up to the segment's end: nothing is divided by a
batch count, so batch size, other rows and ignored later positions cannot change it, and
`inner_lr` is a step size per token of loss.
Update frequencies: W, b (and everything before the chain) are outer parameters, stepped by the
outer optimizer; the fast weights dW_l, momenta M_l, pending sums G_l and the token clock are
inner state (per batch row), changed in context every C_l tokens. Tokens are processed in
segments that end at every boundary of the fastest level, so a prediction only ever uses fast
weights updated from tokens before it, during training and held-out evaluation alike. Inner
updates are computed from detached tensors (no outer gradient through them). Between batches
the inner state resets with `state.mode: reset` (a fresh context per sequence) or is carried
along the streams (`persistent`). The teach scale s(i) also multiplies the Titans memory's
writes in `hope`, so s = 0 turns every inner update off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.common import position
from models.deep_momentum import deep_momentum_step, init_keys
from models.teach import IGNORE, TeachConfig, shape_signal, token_error

# What `read_stats` logs of the teach signal (teach/<name>): the statistics of
# `shape_signal`, then the teach scale, each a mean over active tokens; "tokens" weighs them.
TEACH_STATS = ("norm", "clip_rate", "gate_rate", "scaled_norm", "scale", "tokens")


def _gelu_vjp(g: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """g * gelu'(z), by torch's GELU backward kernel (one kernel where the formula written
    out is eight; it has a derivative of its own), in the two inputs' common dtype."""
    dt = torch.promote_types(g.dtype, z.dtype)
    return torch.ops.aten.gelu_backward(g.to(dt), z.to(dt))


def layernorm_vjp(x: torch.Tensor, g: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """g J_LN(x) per token: the error at LayerNorm's input given the error g at its output,
    by torch's LayerNorm backward kernel (differentiable), in the inputs' common dtype."""
    dt = torch.promote_types(x.dtype, g.dtype)
    x, g = x.to(dt), g.to(dt)
    w = None if norm.weight is None else norm.weight.detach().to(dt)
    shape = norm.normalized_shape
    _, mean, rstd = torch.native_layer_norm(x, shape, w, None, norm.eps)
    grads = torch.ops.aten.native_layer_norm_backward(
        g, x, shape, mean, rstd, w, None, [True, False, False]
    )
    return grads[0]


def _read(x: torch.Tensor, dw: torch.Tensor, which: int) -> torch.Tensor:
    """x (B, n, in) dW^T for a per-row fast weight dW (B, out, in). The chain's products are
    written `bmm`: einsum reaches the same kernel through Python parsing and permutes, which
    at these sizes cost as much as the product."""
    return torch.bmm(x, dw.transpose(1, 2))


class _FastRead(torch.autograd.Function):
    """x dW^T whose backward rebuilds dx = dy dW from the call's factors (`_Bank`) instead
    of keeping dW: a fast weight changes at every level step, and keeping each one for the
    backward pass costs B x d x d_ff per segment (B x T x d x d_ff at token period 1)."""

    @staticmethod
    def forward(ctx, x, dw, bank, which: int, clock: int):
        ctx.bank, ctx.which, ctx.clock = bank, which, clock
        return _read(x, dw, which)

    @staticmethod
    def backward(ctx, dy):
        return ctx.bank.input_grad(dy, ctx.which, ctx.clock), None, None, None, None


class _Bank:
    """One level's fast weights over one call of the chain, as what they are made of: the
    state at the call's start (dW_0, M_0, G_0) and every token's gradient factors P_t (x) Q_t.
    With the level's k-th step in the call M_k = mu M_(k-1) + G_k and dW_k = dW_(k-1) - lr M_k,
    the weight after K steps is
        dW_K = dW_0 - lr a_K M_0 - lr b_(K,1) G_0 - lr sum_t b_(K, j_t) P_t (x) Q_t
    (a_K = sum_(k=1..K) mu^k, b_(K,j) = sum_(i=0..K-j) mu^i, j_t the step that took token t),
    so dy dW_K is dy times a start-state matrix plus an attention-like (n, tokens) product:
    B x T x (d + d_ff) for the whole call, not a weight per segment."""

    def __init__(self, start: list, lr: float, mu: float, period: int, c0: int):
        self.start, self.lr, self.mu, self.p, self.c0 = start, lr, mu, period, c0
        self.parts: dict[int, list] = {2: [], 5: []}
        self.whole: dict[int, tuple] = {}

    def add(self, pairs) -> None:
        for which, (P, Q) in zip((2, 5), pairs):
            self.parts[which].append((P, Q))

    def reader(self, clock: int):
        """The read of a segment starting at `clock` (absolute token time)."""
        return lambda x, dw, which: _FastRead.apply(x, dw, self, which, clock)

    def input_grad(self, dy: torch.Tensor, which: int, clock: int) -> torch.Tensor:
        p, mu, c0 = self.p, self.mu, self.c0
        K = clock // p - c0 // p  # this level's steps in the call before the segment
        dw0, m0, g0 = (self.start[which + k] for k in (-2, -1, 0))
        D = dw0
        if K:
            a = sum(mu**k for k in range(1, K + 1))
            D = D - self.lr * (a * m0 + sum(mu**i for i in range(K)) * g0)
        dx = torch.bmm(dy, D.to(dy.dtype))
        L = (clock // p) * p - c0  # tokens of windows already stepped
        if L > 0:
            if which not in self.whole:
                self.whole[which] = tuple(torch.cat(t, dim=1) for t in zip(*self.parts[which]))
            P, Q = (t[:, :L].to(dy.dtype) for t in self.whole[which])
            j = torch.arange(c0, c0 + L, device=dy.device) // p - c0 // p + 1
            e = (K - j).to(dy.dtype)
            b = (1 - mu ** (e + 1)) / (1 - mu)  # mu < 1
            dx = dx - self.lr * ((dy @ P.transpose(1, 2)) * b) @ Q
        return dx


class CMSBlock(nn.Module):
    """One CMS level: a residual MLP whose weights carry per-row fast weights."""

    def __init__(self, d: int, d_ff: int):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.w1 = nn.Linear(d, d_ff)
        self.w2 = nn.Linear(d_ff, d)

    def forward(self, y: torch.Tensor, dw1: torch.Tensor, dw2: torch.Tensor, read=None):
        """y (B, n, d) -> (y + MLP(LN y), (y, u, z, a)) with the cache kept for the inner
        update; `read(x, dW, which)` = x dW^T (default: kept for backward as it is)."""
        read = read or _read
        u = self.norm(y)
        # (W + dW) u through the module, so that optimizers hooking nn.Linear inputs (the
        # delta rule) see the block's inputs
        z = self.w1(u) + read(u, dw1, 2)
        a = F.gelu(z)
        return y + self.w2(a) + read(a, dw2, 5), (y, u, z, a)

    def inner_grads(self, g, cache, dw1, dw2, carry: bool):
        """For the error g (B, n, d) at the block's output: the per-token grads of
        <MLP(u_t), g_t> w.r.t. W1 and W2 as outer-product factors ((back, u), (g, a)): token
        t's grad is back_t (x) u_t and g_t (x) a_t; and (when `carry`) the error at the
        block's input, g + g J_{MLP o LN}."""
        y, u, z, a = (c.detach() for c in cache)
        w2 = self.w2.weight.detach() + dw2
        back = _gelu_vjp(torch.bmm(g, w2), z)
        if not carry:
            return (back, u), (g, a), None
        du = torch.bmm(back, self.w1.weight.detach() + dw1)
        return (back, u), (g, a), g + layernorm_vjp(y, du, self.norm)


class CMSChain(nn.Module):
    """The chain of CMS blocks with token periods, its inner state and its counters."""

    def __init__(
        self,
        d: int,
        d_ff: int,
        periods,
        lr,
        momentum: float,
        teach: TeachConfig,
        chunk: int = 0,
        deep: int = 0,
        deep_lr: float = 1.0,
    ):
        """`deep` > 0: each fast weight's momentum is a deep momentum memory with that many
        hidden units and step size `deep_lr` (models/deep_momentum.py)."""
        super().__init__()
        self.blocks = nn.ModuleList(CMSBlock(d, d_ff) for _ in periods)
        self.periods, self.lr, self.momentum, self.teach = list(periods), list(lr), momentum, teach
        self.chunk = chunk or self.periods[0]  # tokens read with one set of fast weights
        self.d, self.d_ff = d, d_ff
        self.deep, self.deep_lr = deep, deep_lr
        self.stride = 10 if deep else 6  # state tensors per block
        for i in range(len(periods) if deep else 0):  # A1_0 of each fast weight's memory
            self.register_buffer(f"keys{i}_1", init_keys(deep, d))
            self.register_buffer(f"keys{i}_2", init_keys(deep, d_ff))
        self.dual: bool | None = None  # rebuild dW in backward (`_Bank`); None: when smaller
        self.register_buffer("updates", torch.zeros(len(periods), dtype=torch.long))
        self.register_buffer("last_norm", torch.zeros(len(periods)))
        self.register_buffer("deep_share", torch.zeros(len(periods)))
        self.applied: dict[int, tuple] = {}  # level -> its last W2 step, the deep share
        # the teach statistics times their tokens, summed since the last read (not saved:
        # a restored run logs from its next read on)
        self.register_buffer("teach_sums", torch.zeros(len(TEACH_STATS), dtype=torch.float64),
                             persistent=False)  # fmt: skip

    def init_state(self, B: int, device, dtype=None) -> tuple:
        out = []
        for i, b in enumerate(self.blocks):
            w1, w2 = b.w1.weight, b.w2.weight
            dt = dtype or w1.dtype
            for shape in (w1.shape, w2.shape):  # dW, M, G for W1 then for W2
                out += [torch.zeros(B, *shape, device=device, dtype=dt) for _ in range(3)]
            if self.deep:  # A1, A2 of W1's memory, then of W2's
                for j in (1, 2):
                    keys = getattr(self, f"keys{i}_{j}").to(device, dt)
                    a2 = torch.zeros(B, keys.shape[1], self.deep, device=device, dtype=dt)
                    out += [keys.expand(B, *keys.shape).clone(), a2]
        return (*out, torch.zeros(B, dtype=torch.float64, device=device))

    def _add_stats(self, st: dict, n: torch.Tensor, scale: float) -> None:
        """Accumulate the teach signal's per-token means (`TEACH_STATS`), weighted by the
        segment's active tokens `n`, on the device: read on the host when logged
        (`read_stats`), not at every segment (under torch.compile a read splits the graph)."""
        row = torch.stack([st[k] for k in TEACH_STATS[:-2]]).double()
        self.teach_sums += torch.cat([row, row.new_tensor([scale, 1.0])]) * n

    def forward(self, h, state, head: nn.Linear, norm_out, targets, scale: float):
        """Logits of every position, predicting each segment with the fast weights of the
        tokens before it; with targets and scale > 0 the fast weights learn as they go."""
        B, T, _ = h.shape
        c0 = position(state, -1)
        state = self.init_state(B, h.device, h.dtype) if state is None else state
        n = self.stride
        fast = [list(state[n * i : n * i + n]) for i in range(len(self.blocks))]
        clock = state[-1]
        learn = targets is not None and scale > 0
        t0, logits_all, stepped = 0, [], {}
        banks = None
        if learn and torch.is_grad_enabled() and self._dual(T):
            banks = [_Bank(list(f), lr, self.momentum, p, c0)
                     for f, lr, p in zip(fast, self.lr, self.periods)]  # fmt: skip
        while t0 < T:
            t1 = min(T, t0 + self.chunk - (c0 + t0) % self.chunk)
            y, saved = h[:, t0:t1], []
            for i, (blk, f) in enumerate(zip(self.blocks, fast)):
                y, cache = blk(y, f[0], f[3], banks[i].reader(c0 + t0) if banks else None)
                saved.append(cache)
            hn = norm_out(y)
            logits = head(hn)
            logits_all.append(logits)
            if learn:
                factors = self._learn(y, logits, targets[:, t0:t1], head, norm_out, saved, fast,
                                      scale)  # fmt: skip
                for bank, pairs in zip(banks or (), factors):
                    bank.add(pairs)
                self._absorb(factors, fast, c0 + t0, c0 + t1, stepped)
            t0 = t1
        self._count(stepped, fast)
        new_state = tuple(t for f in fast for t in f) + (clock + T,)
        return torch.cat(logits_all, dim=1), new_state

    def _dual(self, T: int) -> bool:
        """Whether the backward pass rebuilds the fast weights from the call's B x T x
        (d + d_ff) factors (`_Bank`) rather than keeping the B x d x d_ff weight of each of
        its segments: when that keeps at least 8 times less. The rebuild costs up to
        T (d + d_ff) / (2 d d_ff) more backward FLOPs (at d 32 it was 15-22% slower, at
        d 256 the kept weights are 16 x 1 MiB per row for a 64-token call)."""
        if self.deep:  # a deep momentum's read has no closed form in the tokens
            return False
        if self.dual is not None:
            return self.dual
        segments = -(-T // self.chunk)
        return segments * self.d * self.d_ff > 8 * T * (self.d + self.d_ff)

    def _learn(self, y, logits, targets, head, norm_out, saved, fast, scale):
        """Per block, the per-token gradient factors of the segment (`CMSBlock.inner_grads`),
        all at the fast weights the segment was read with."""
        with torch.no_grad():
            active = targets != IGNORE
            err = token_error(logits, targets, head.weight).to(y.dtype)
            err, st = shape_signal(err, scale, self.teach, active)
            if self.training:
                self._add_stats(st, active.sum(), scale)
            g = layernorm_vjp(y.detach(), err, norm_out)  # the error at y_L
            factors = [None] * len(self.blocks)
            for i in reversed(range(len(self.blocks))):
                f = fast[i]
                g1, g2, g = self.blocks[i].inner_grads(g, saved[i], f[0], f[3], carry=i > 0)
                factors[i] = (g1, g2)
            return factors

    def _absorb(self, factors, fast, start: int, end: int, stepped: dict) -> None:
        """Add a segment's per-token gradients (clock times start..end) to each level's
        pending sum, window by window of that level's own period, stepping the level at
        each boundary; `stepped` counts the steps per level. In the exact form the segment
        ends at the fastest period's next boundary, so each level has one window."""
        for i, (p, f, pairs) in enumerate(zip(self.periods, fast, factors)):
            cuts = [start, *range((start // p + 1) * p, end, p), end]
            for g, (x, w) in zip((2, 5), pairs):
                for a, e in zip(cuts, cuts[1:]):  # (one window at a time: each is B x d x d_ff)
                    sl = slice(a - start, e - start)
                    f[g] = f[g] + torch.bmm(x[:, sl].transpose(1, 2), w[:, sl])
                    if e % p == 0:
                        self._step_level(i, f, g)
            stepped[i] = stepped.get(i, 0) + sum(e % p == 0 for e in cuts[1:])

    def _step_level(self, i: int, f: list, g: int) -> None:
        """One inner step of level i's fast weight dW (index g - 2 in f) from its pending
        sum G (index g): M <- mu M + G; dW <- dW - lr M; G <- 0. With deep momentum M is the
        memory's B, its A1, A2 follow the level's other state, and dW moves by its read."""
        dw, m = g - 2, g - 1
        if self.deep:
            j = 6 if g == 2 else 8
            keys = getattr(self, f"keys{i}_{1 if g == 2 else 2}").to(f[g].dtype)
            step, f[m], f[j], f[j + 1], share = deep_momentum_step(
                f[g], f[m], f[j], f[j + 1], keys, self.momentum, self.deep_lr
            )
            if g == 5:
                self.applied[i] = (step, share)
        else:
            f[m] = f[g] if not self.momentum else torch.add(f[g], f[m], alpha=self.momentum)
            step = f[m]
        f[dw] = torch.add(f[dw], step, alpha=-self.lr[i])
        f[g] = torch.zeros_like(f[g])

    def _count(self, stepped: dict, fast) -> None:
        """Once per call: the levels' update counters and the norm of each stepped level's
        last step (of its W2; lr times its momentum M), rather than a sync at every step."""
        if not self.training or not any(stepped.values()):
            return
        for i, k in stepped.items():
            if k:
                self.updates[i] += k
                step, share = self.applied.get(i, (fast[i][4], None))
                self.last_norm[i] = self.lr[i] * step.flatten(1).norm(dim=1).mean()
                if share is not None:
                    self.deep_share[i] = share.mean()
        self.applied = {}

    def read_stats(self) -> dict[str, float]:
        """Inner-update counters and the teach signal's statistics since the last read."""
        out = {}
        for i, p in enumerate(self.periods):
            out[f"cms_inner/{i}_p{p}/updates"] = float(self.updates[i].item())
            out[f"cms_inner/{i}_p{p}/update_norm"] = float(self.last_norm[i].item())
            if self.deep:
                out[f"cms_inner/{i}_p{p}/deep_share"] = float(self.deep_share[i].item())
        sums = self.teach_sums.tolist()
        if sums[-1]:  # tokens
            out.update({f"teach/{k}": v / sums[-1] for k, v in zip(TEACH_STATS[:-1], sums)})
        self.teach_sums.zero_()
        return out
