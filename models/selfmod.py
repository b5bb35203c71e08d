"""Self-modifying Titans (Nested Learning, sec. 8, "self-referential Titans"): a memory that
generates its own keys, values, write rates and retention from memories written the same way;
`hope_selfmod` is HOPE with it in place of the Titans memory.

Notation (per batch row, per token t; c(t) the start of t's chunk of `memory_chunk` tokens;
j runs over the five memories k, v, eta, alpha, o)
    M_j(u; W) = P_j u + W1_j s(W2_j u)        a residual MLP, s = silu, W = (W2, W1[, P]);
                                              P_j = I (fixed) for the square memories k, v, o,
                                              a learned 1 x d row for the scalar eta, alpha
    k_t     = normalize(M_k(x_t; W_k,c(t)))   keys, values and gates all come from the
    v_t     = M_v(x_t; W_v,c(t))              memories as they were at the chunk's start
    eta_t   = eta_max sigmoid(M_eta(x_t; W_eta,c(t)) + b_eta)       write rate
    a_t     = sigmoid(M_alpha(x_t; W_alpha,c(t)) + b_alpha)         retention
    q_t     = normalize(x_t W_Q)               a fixed projection, as in the paper
    y_t     = M_o(q_t; W_o,c(t)) W_O           the read-out
    each memory j regresses its own target, vhat_j,t = M_j(v_t; W_j,c(t)) (a constant to
    the inner step): l_j,t(W) = ||M_j(k_t; W) - vhat_j,t||^2, and steps by delta gradient
    descent on its input-side weights, decay on the output-side one:
    W2_j <- W2_j (a_t I - eta_t k_t k_t^T) - eta_t grad_W2 l_j,t(W_j,c(t))
    P_j  <- P_j  (a_t I - eta_t k_t k_t^T) - eta_t grad_P  l_j,t(W_j,c(t))
    W1_j <- a_t W1_j - eta_t grad_W1 l_j,t(W_j,c(t))
With e = 2 (M_j(k) - vhat), z = W2 k: grad_W1 = e (x) s(z), grad_W2 = ((W1^T e) * s'(z)) (x) k,
grad_P = e (x) k, closed forms tested against autograd in float64. Each memory's write of a
token, eta_t grad l_j,t (its weights together, Frobenius norm w_j,t), is scaled by
c_j,t = 1 / max(1, w_j,t / memory_max_write) (a constant to backpropagation); the delta-rule
term eta_t W k k^T is not a write and stays. Every gradient of a chunk
is taken at the chunk's start, so a chunk's keys, values, gates, targets and gradients are one
batched computation; the steps themselves are applied token by token (each preconditioner
acts on the weight the token before left). With chunk 1 it is the paper's token recurrence.
Reads use the chunk-start memory o, so y_t never sees token t's own write (the paper reads
M_(t-1)). The chunk grid runs along the stream: the state carries every memory's current
and chunk-start weights and the position in the chunk, so any split of a stream equals one
pass. `write_scale` s (HOPE's teach scale) scales eta_t by s and the forgetting 1 - a_t by s:
0 leaves every memory at its W_0.

Update frequencies: the five memories' weights are inner state, written at every token and
carried between calls (detached) or reset to their learned W_0 per batch; W_0, W_Q, W_O,
b_eta and b_alpha are outer parameters, trained by backpropagation through the inner steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from models.common import kept, position, require
from models.hope import _Hope
from models.teach import TeachConfig
from models.titans import MemoryLM
from models.titans_memory import silu_grad
from models.titans_scan import chunk_cuts
from models.transformer import AttentionConfig, Block

NAMES = ("k", "v", "eta", "alpha", "o")
SCALAR = ("eta", "alpha")  # one output: their P is learned (d_out != d_in)
SQUARE = ("k", "v", "o")  # P = I


@dataclass
class HopeSelfModConfig(AttentionConfig):
    """`model:` section for `kind: hope_selfmod` (the CMS chain is set in `cms:`)."""

    kind: Literal["hope_selfmod"] = "hope_selfmod"
    memory_chunk: int = 16
    """Tokens whose inner gradients share the chunk-start memories (1: token by token)."""
    memory_hidden: int = 0
    """Hidden width of each memory's MLP (0: d_model)."""
    memory_eta_max: float = 0.1
    """Largest write rate eta_t."""
    memory_max_write: float = 1.0
    """Largest Frobenius norm of one token's write eta_t grad l_j,t to one memory (its
    weights together); a larger write is scaled down to it and counted (memory/<i>/bounded).
    0: none. Why: each memory's target is its own read of a value another memory made, so a
    write grows the next write; carried along a stream (state.mode persistent) the value
    memory went from norm 8 to 1e4 in one chunk and to inf in the next."""
    inner_updates: bool = True
    """false: no inner update at all (memories and CMS chain): the ablation."""

    def __post_init__(self):
        super().__post_init__()
        require(self.memory_chunk >= 1, "memory_chunk", f">= 1, got {self.memory_chunk}")
        require(self.memory_hidden >= 0, "memory_hidden", f">= 0, got {self.memory_hidden}")
        require(self.memory_eta_max > 0, "memory_eta_max", f"> 0, got {self.memory_eta_max}")
        require(
            self.memory_max_write >= 0, "memory_max_write", f">= 0, got {self.memory_max_write}"
        )


def memory_shapes(d: int, h: int) -> dict[str, list[tuple[int, int]]]:
    """Each memory's weights in state order: W2 (h x d), W1 (out x h)[, P (1 x d)]."""
    return {n: [(h, d), (1, h), (1, d)] if n in SCALAR else [(h, d), (d, h)] for n in NAMES}


def apply(ws: list[torch.Tensor], u: torch.Tensor) -> torch.Tensor:
    """M(u) for u (B, n, d_in) and weights with a leading batch dim (products as `bmm`, as
    the Titans memory's are)."""
    out = torch.bmm(F.silu(torch.bmm(u, ws[0].transpose(1, 2))), ws[1].transpose(1, 2))
    return out + (u if len(ws) == 2 else torch.bmm(u, ws[2].transpose(1, 2)))


def factors(ws: list[torch.Tensor], k: torch.Tensor, target: torch.Tensor):
    """Per-token factors of grad ||M(k_t; W) - target_t||^2 at W: (e, s(z), dz), so that
    grad_W1 = e (x) s(z), grad_W2 = dz (x) k, grad_P = e (x) k."""
    z = torch.bmm(k, ws[0].transpose(1, 2))
    a = F.silu(z)
    out = torch.bmm(a, ws[1].transpose(1, 2))
    out = out + (k if len(ws) == 2 else torch.bmm(k, ws[2].transpose(1, 2)))
    e = 2 * (out - target)
    dz = torch.bmm(e, ws[1]) * silu_grad(z, a)
    return e, a, dz


def inner_grads(ws: list[torch.Tensor], k: torch.Tensor, target: torch.Tensor):
    """The full per-token gradient matrices (B, n, ...) of each weight, from `factors`."""
    e, a, dz = factors(ws, k, target)
    outer = lambda x, y: x.unsqueeze(-1) * y.unsqueeze(-2)  # noqa: E731
    return [outer(dz, k), outer(e, a)] + ([outer(e, k)] if len(ws) == 3 else [])


def write_sizes(fs: dict, k: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
    """Each token's write to each memory, ||eta_t grad l_j,t|| over its weights together,
    (B, n, memories in `fs`' order), from `factors`: ||x (x) y|| = ||x|| ||y||."""
    k2 = k.pow(2).sum(-1)
    sq = []
    for n, (e, a, dz) in fs.items():
        e2 = e.pow(2).sum(-1)
        sq.append(e2 * a.pow(2).sum(-1) + dz.pow(2).sum(-1) * k2 + (e2 * k2 if n in SCALAR else 0))
    return torch.stack(sq, -1).sqrt() * eta.unsqueeze(-1)


class SelfModMemory(nn.Module):
    is_memory = True
    write_units = len(NAMES)
    """Writes per token that the bound counts: one per memory."""

    def __init__(self, d_model: int, cfg: HopeSelfModConfig):
        super().__init__()
        self.cfg = cfg
        d, h = d_model, cfg.memory_hidden or d_model
        self.shapes = memory_shapes(d, h)
        self.init_weights = nn.ParameterDict()
        for name, shapes in self.shapes.items():
            for i, (r, c) in enumerate(shapes):
                # W2 ~ N(0, 1/d); W1 small, so each square memory starts near the identity
                # and each scalar one near 0; P of the scalar memories starts at 0
                scale = (1 / c**0.5, 0.1 / c**0.5, 0.0)[i]
                self.init_weights[f"{name}_{i}"] = nn.Parameter(torch.randn(r, c) * scale)
        self.q = nn.Linear(d, d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        # retention starts near 1 (a ~ 0.98), the write rate at eta_max sigmoid(-2)
        self.b_eta = nn.Parameter(torch.tensor(-2.0))
        self.b_alpha = nn.Parameter(torch.tensor(4.0))
        self.write_scale = 1.0
        self.register_buffer("writes", torch.zeros((), dtype=torch.long))
        self.register_buffer("bounded", torch.zeros((), dtype=torch.long))
        self.register_buffer("update_norm", torch.zeros(()))  # ||W1_o - W1_o,0|| after a batch
        self._last: dict[str, torch.Tensor] = {}

    def weights0(self, name: str) -> list[torch.Tensor]:
        return [self.init_weights[f"{name}_{i}"] for i in range(len(self.shapes[name]))]

    def init_state(self, batch: int):
        """Every memory's current weights, then its chunk-start weights, then the position."""
        ws = [w.unsqueeze(0).expand(batch, *w.shape) for n in NAMES for w in self.weights0(n)]
        pos = torch.zeros(batch, dtype=torch.float64, device=ws[0].device)
        return (*ws, *ws, pos)

    def _split(self, batch: int, state):
        counts = [len(self.shapes[n]) for n in NAMES]
        half = sum(counts)
        pos = position(state, 2 * half)
        state = self.init_state(batch) if state is None else state
        cur, start, i = {}, {}, 0
        for n, c in zip(NAMES, counts):
            cur[n], start[n] = list(state[i : i + c]), list(state[half + i : half + i + c])
            i += c
        return cur, start, pos

    def _state(self, cur: dict, start: dict, pos: int):
        ws = [w for n in NAMES for w in cur[n]]
        p = torch.full((ws[0].shape[0],), float(pos), dtype=torch.float64, device=ws[0].device)
        return (*ws, *[w for n in NAMES for w in start[n]], p)

    def _generate(self, x: torch.Tensor, start: dict):
        """k, v, eta, a for the tokens x of one chunk, from the chunk-start memories."""
        s = self.write_scale
        k = F.normalize(apply(start["k"], x), dim=-1)
        v = apply(start["v"], x)
        eta = self.cfg.memory_eta_max * torch.sigmoid(apply(start["eta"], x)[..., 0] + self.b_eta)
        a = torch.sigmoid(apply(start["alpha"], x)[..., 0] + self.b_alpha)
        return k, v, eta * s, 1 - s * (1 - a)

    @staticmethod
    def _steps(cur: dict, fs: dict, k, eta, a) -> dict:
        """Every memory's inner steps over one segment's n tokens. Its gradients were all
        taken at the chunk's start and only the weights at its end are read, so the token
        recurrence is solved in closed form (a UT transform, as in chunkwise DeltaNet) rather
        than stepped token by token. With g_i = a_1 ... a_i and r_i = eta_i g_n / g_i:
        output side (W1):   W <- a W - eta e (x) s(z)  unrolls to  g_n W_0 - sum_i r_i e_i s_i^T;
        input side (W2, P): W <- a W - eta u k^T with u_i = W_(i-1) k_i + l_i (l = dz for W2,
        e for P) unrolls to g_n W_0 - sum_i r_i u_i k_i^T, where the u_i solve the unit
        lower-triangular system u_i + sum_(j<i) eta_j (g_(i-1) / g_j) (k_i . k_j) u_j
        = g_(i-1) W_0 k_i + l_i. The weights of one role and shape are stacked across
        memories, so a segment costs four solves, not twelve."""
        roles = [  # (memories, weight index, factor of l or e, of s(z): None on the input side)
            (NAMES, 0, 2, None),
            (SQUARE, 1, 0, 1),
            (SCALAR, 1, 0, 1),
            (SCALAR, 2, 0, None),
        ]
        n = k.shape[1]
        log_a = torch.log(a.clamp_min(torch.finfo(a.dtype).tiny))
        cum = log_a.cumsum(1)  # log g_i
        g_n = torch.exp(cum[:, -1]).view(-1, 1, 1, 1)
        r = (eta * torch.exp(cum[:, -1:] - cum))[:, None, :, None]  # (B, 1, n, 1)
        before = cum - log_a  # log g_(i-1)
        lower = torch.ones(n, n, dtype=torch.bool, device=k.device).tril(-1)
        expo = (before[:, :, None] - cum[:, None, :]).masked_fill(~lower, float("-inf"))
        A = (torch.exp(expo) * (k @ k.transpose(1, 2)) * eta[:, None, :])[:, None]
        kb = k[:, None]  # (B, 1, n, d)
        out = {nm: list(cur[nm]) for nm in NAMES}
        for names, w, left, right in roles:
            W = torch.stack([cur[nm][w] for nm in names], 1)  # (B, m, r, c)
            L = torch.stack([fs[nm][left] for nm in names], 1)  # (B, m, n, r)
            if right is None:
                rhs = torch.exp(before)[:, None, :, None] * (kb @ W.transpose(-1, -2)) + L
                U = torch.linalg.solve_triangular(A, rhs, upper=False, unitriangular=True)
                W = g_n * W - (U * r).transpose(-1, -2) @ kb
            else:
                R = torch.stack([fs[nm][right] for nm in names], 1)  # (B, m, n, h)
                W = g_n * W - (L * r).transpose(-1, -2) @ R
            for j, nm in enumerate(names):
                out[nm][w] = W[:, j]
        return out

    def forward(self, x: torch.Tensor, state=None):
        """x (B, T, d) -> read-out (B, T, d) and the state after T."""
        B, T, _ = x.shape
        cur, start, pos = self._split(B, state)
        q = F.normalize(self.q(x), dim=-1)
        b = self.cfg.memory_chunk
        cuts = chunk_cuts(T, pos, b)
        ys, gates = [], []
        for t0, t1 in zip(cuts, cuts[1:]):
            xs = x[:, t0:t1]
            k, v, eta, a = self._generate(xs, start)
            ys.append(apply(start["o"], q[:, t0:t1]))
            fs = {n: factors(start[n], k, apply(start[n], v)) for n in NAMES}
            fs, size = self._bound(fs, k, eta)
            cur = self._steps(cur, fs, k, eta, a)
            gates.append((eta, a, v, size))
            pos = (pos + t1 - t0) % b
            if pos == 0:
                start = dict(cur)
        if self.training and self.write_scale:
            self.writes += B * T
            with torch.no_grad():
                moved = cur["o"][1] - self.init_weights["o_1"]
                self.update_norm.copy_(moved.flatten(1).norm(dim=1).mean())
                eta, a, v, size = (torch.cat(t, dim=1) for t in zip(*gates))
                cap = self.cfg.memory_max_write
                if cap:
                    self.bounded += (size > cap).sum()
                named = {"eta": eta, "a": a, "v": v, "w": cur["o"][1], "size": size}
                self._last = {k: kept(t) for k, t in named.items()}
        y = torch.cat(ys, dim=1) if len(ys) > 1 else ys[0]
        return self.out(y), self._state(cur, start, pos)

    def _bound(self, fs: dict, k: torch.Tensor, eta: torch.Tensor):
        """The factors with each token's write to each memory scaled down to at most
        memory_max_write (e and dz carry every gradient's left factor), and the sizes
        before the bound. The scale is a constant to backpropagation, as a clipped
        gradient's is."""
        with torch.no_grad():
            size = write_sizes(fs, k, eta)
        cap = self.cfg.memory_max_write
        if not cap:
            return fs, size
        c = 1 / (size / cap).clamp(min=1)
        return {
            n: (e * c[..., j, None], a, dz * c[..., j, None])
            for j, (n, (e, a, dz)) in enumerate(fs.items())
        }, size

    @property
    def diagnostics(self) -> dict[str, torch.Tensor]:
        """Of the last training batch: the write rates, the retention, the values' norm,
        the read-out memory's W1 norm, the largest write before the bound and the share of
        writes bounded."""
        if not self._last:
            return {}
        last, cap = self._last, self.cfg.memory_max_write
        over = last["size"] > cap if cap else torch.zeros_like(last["size"], dtype=torch.bool)
        return {
            "eta_mean": last["eta"].mean(),
            "eta_max": last["eta"].max(),
            "alpha_mean": last["a"].mean(),
            "alpha_min": last["a"].min(),
            "value_norm": last["v"].norm(dim=-1).mean(),
            "weight_norm": last["w"].flatten(1).norm(dim=1).mean(),
            "write_max": last["size"].max(),
            "bound_rate": over.float().mean(),
        }

    def reference_forward(self, x: torch.Tensor, state=None):
        """The recurrence one token at a time, every inner gradient by autograd at its
        chunk's start memory and every key, value and gate computed alone, for the tests."""
        B, T, _ = x.shape
        cur, start, pos = self._split(B, state)
        b, ys = self.cfg.memory_chunk, []
        for t in range(T):
            xt = x[:, t : t + 1]
            k, v, eta, a = self._generate(xt, start)
            ys.append(apply(start["o"], F.normalize(self.q(xt), dim=-1)))
            new, cap = {}, self.cfg.memory_max_write
            for n in NAMES:
                at = [w.detach().requires_grad_(True) for w in start[n]]
                target = apply(start[n], v).detach()
                with torch.enable_grad():
                    loss = (apply(at, k.detach()) - target).pow(2).sum()
                    gs = torch.autograd.grad(loss, at)
                size = eta.view(B) * sum(g.pow(2).sum((-1, -2)) for g in gs).sqrt()
                if cap:
                    gs = [g / (size / cap).clamp(min=1).view(B, 1, 1) for g in gs]
                e_, a_ = eta.view(B, 1, 1), a.view(B, 1, 1)
                kk = k[:, 0].unsqueeze(-1) * k[:, 0].unsqueeze(-2)  # k k^T (B, d, d)
                eye = torch.eye(kk.shape[-1], dtype=x.dtype, device=x.device)
                pre = a_ * eye - e_ * kk
                w = cur[n]
                new[n] = [w[0] @ pre - e_ * gs[0], a_ * w[1] - e_ * gs[1]]
                if len(w) == 3:
                    new[n].append(w[2] @ pre - e_ * gs[2])
            cur = new
            pos = (pos + 1) % b
            if pos == 0:
                start = dict(cur)
        return self.out(torch.cat(ys, dim=1)), self._state(cur, start, pos)


class SelfModBlock(nn.Module):
    """h' = h + Attn(LN h); h'' = h' + SelfMod(LN_m h'); h = h'' + MLP(LN h'')."""

    def __init__(self, cfg: HopeSelfModConfig):
        super().__init__()
        self.block = Block(cfg)
        self.norm_mem = nn.LayerNorm(cfg.d_model)
        self.memory = SelfModMemory(cfg.d_model, cfg)

    def forward(self, h: torch.Tensor, state=None):
        b = self.block
        h = h + b.attn(b.norm_attn(h))
        m, state = self.memory(self.norm_mem(h), state)
        h = h + m
        return h + b.mlp(b.norm_mlp(h)), state


def selfmod_state_names(n_layers: int) -> tuple[str, ...]:
    shapes = memory_shapes(1, 1)
    ws = [f"{n}_w{i}" for n in NAMES for i in range(len(shapes[n]))]
    names = (*ws, *(f"{w}_c" for w in ws), "pos")
    return tuple(f"sm{i}_{n}" for i in range(n_layers) for n in names)


class HopeSelfMod(_Hope, MemoryLM):
    """HOPE with self-modifying Titans: attention + self-modifying memory blocks, then the
    CMS chain (`models/hope.py`), the teach scale scaling the memories' writes too."""

    def __init__(self, cfg: HopeSelfModConfig, vocab_size: int, cms, teach: TeachConfig):
        blocks = [SelfModBlock(cfg) for _ in range(cfg.n_layers)]
        MemoryLM.__init__(self, cfg, vocab_size, blocks, len(selfmod_state_names(1)))
        self.state_names = selfmod_state_names(cfg.n_layers)
        self._hope_init(cfg, cms, teach)
