"""Titans neural memory: an MLP written at test time by gradient steps (Titans, sec. 3).

Notation (shared notes §1; per batch row, per token t)
    k_t = normalize(x_t W_K),  v_t = x_t W_V,  q_t = normalize(x_t W_Q)
    M_W(k)    depth 1: k W_1;   depth 2: silu(k W_1) W_2           (W = the memory weights)
    l_t(W)    = ||M_W(k_t) - v_t||^2                               (associative loss)
    theta_t   = theta_max * sigmoid(x_t w_theta + b_theta)          write rate
    eta_t     = sigmoid(x_t w_eta + b_eta)                          momentum   (0 when off)
    alpha_t   = sigmoid(x_t w_alpha + b_alpha)                      forgetting (0 when off)
    S_t       = eta_t S_{t-1} - theta_t grad l_t(W_{c(t)})
    W_t       = (1 - alpha_t) W_{t-1} + S_t      (memory_forget_to init: W - W_0 on both sides)
    the write theta_t grad l_t is scaled down to Frobenius norm <= memory_max_write (bounded)
    y_t       = M_{W_t}(q_t) W_O
memory_gates chunk (titans-pytorch's reading): momentum and forgetting act once per chunk, on
the chunk's summed write, with the gates of the chunk's first token f (eta_c = eta_f,
alpha_c = alpha_f), and a read inside the chunk sees the writes so far:
    S_t       = eta_c S_{c-1} - sum_{f<=s<=t} theta_s grad l_s(W_{c(t)})
    W_t       = (1 - alpha_c) W_{c-1} + S_t          (W_{c-1}, S_{c-1}: at the chunk's start)
so at chunk 1 both readings are one recurrence. The first token decides because a read at t
must not see later tokens; titans-pytorch pools the whole chunk and reads it a chunk late.
memory_heads H: the memory is H memories side by side, head j reading k, v, q's j-th slice of
width d/H with its own gates and its own learned W_0 (stored stacked, H*rows x cols, so one
head is today's memory exactly); the read-outs are concatenated before W_O.
c(t) is the memory at the start of t's chunk of `chunk` tokens: every gradient of a chunk is
taken at one memory, so a chunk's gradients are one batched call and, the gradients being
fixed, both recurrences unroll into products of the gates (`models/titans_scan.py`: cumulative
log-gate sums, no loop over tokens); and each gradient being an outer product x_t (x) y_t, a read
M_{W_t}(q_t) is an attention-like (n, n) product, so no per-token W_t is ever formed (the
"dual form": memory B x d x h per weight, not B x chunk x d x h). With chunk 1
it is the token-by-token recurrence exactly. `reference_forward` is that recurrence written
plainly (autograd gradients, one token at a time), for the equivalence tests.
The chunk grid runs along the stream, not along each call: the state carries W_{c(t)} and
the position within the current chunk, so a call that ends mid-chunk leaves the rest of that
chunk to the next call, and any split of a stream into calls equals one pass over it.

Update frequencies: W and S are inner state, written at every token and carried between
calls (`state`: W, S, W_c, the position in the chunk); W_K, W_V, W_Q, W_O, the gates and W_0
(the memory every sequence starts from) are outer parameters, trained by backpropagation
through the inner updates. `write_scale` multiplies theta and alpha (HOPE's teach scale; 0
makes every write, forgetting included, a no-op, so the memory stays at W_0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from models.common import kept, position, require
from models.deep_momentum import check_choice
from models.titans_scan import chunk_cuts, ends, merge_groups, reads, segment_gates


@dataclass
class MemoryConfig:
    """Titans memory settings (fields of `model:` for kinds titans and hope)."""

    memory_depth: int = 2
    """Layers of the memory MLP: 1 (linear) or 2."""
    memory_hidden: int = 0
    """Hidden width of a depth-2 memory (0: d_model)."""
    memory_chunk: int = 16
    """Tokens whose write gradients share one memory (1: token by token)."""
    memory_momentum: bool = True
    """Data-dependent momentum eta_t (off: eta = 0)."""
    memory_forget: bool = True
    """Data-dependent forgetting alpha_t (off: alpha = 0)."""
    memory_theta_max: float = 0.1
    """Largest per-token write rate."""
    memory_forget_to: Literal["zero", "init"] = "zero"
    """What forgetting decays the memory toward: zero (Titans' M_t = (1 - alpha_t) M_{t-1} +
    S_t) or its learned initial memory W_0 (M_t - W_0 = (1 - alpha_t)(M_{t-1} - W_0) + S_t).
    init suits state.mode persistent: there W_0 is otherwise met once per stream, and a
    depth-2 memory forgotten to zero writes nothing again (every gradient at W = 0 is 0)."""
    memory_gates: Literal["token", "chunk"] = "token"
    """When momentum and forgetting act: at every token (token) or once per chunk on the
    chunk's summed write, with the gates of its first token (chunk; the notation above)."""
    memory_heads: int = 1
    """Memories side by side, each on a d_model / memory_heads slice of k, v and q, with its
    own gates and learned initial weights (1: one memory over the whole width)."""
    memory_max_write: float = 10.0
    """Largest Frobenius norm of one token's write theta_t grad l_t (all the memory's weights
    together); a larger write is scaled down to it and counted (memory/<i>/bounded). 0: none."""
    memory_optimizer: Literal["momentum", "deep_momentum"] = "momentum"
    """The memory's inner optimizer: momentum S (the notation above) or deep_momentum, where
    S is read from a momentum memory trained in context (models/deep_memory.py)."""
    memory_deep_hidden: int = 0
    """deep_momentum: hidden units of each weight's momentum memory (required there)."""

    def check_memory(self, d_model: int | None = None):
        require(self.memory_depth in (1, 2), "memory_depth", f"1 or 2, got {self.memory_depth}")
        require(self.memory_hidden >= 0, "memory_hidden", f">= 0, got {self.memory_hidden}")
        require(self.memory_chunk >= 1, "memory_chunk", f">= 1, got {self.memory_chunk}")
        require(self.memory_theta_max > 0, "memory_theta_max", f"> 0, got {self.memory_theta_max}")
        require(
            self.memory_forget_to in ("zero", "init"),
            "memory_forget_to",
            f"zero or init, got {self.memory_forget_to!r}",
        )
        require(self.memory_heads >= 1, "memory_heads", f">= 1, got {self.memory_heads}")
        deep = check_choice(
            "memory_optimizer", self.memory_optimizer, "memory_deep_hidden", self.memory_deep_hidden
        )
        require(
            not deep or (self.memory_momentum and self.memory_gates == "token"),
            "memory_optimizer",
            "momentum unless memory_momentum is on and memory_gates is token (deep_momentum "
            "steps its momentum memory at every token, forgetting at the momentum gate eta_t)",
        )
        if d_model is not None:
            hidden = self.memory_hidden or d_model
            require(
                d_model % self.memory_heads == 0 and hidden % self.memory_heads == 0,
                "memory_heads",
                f"a divisor of d_model ({d_model}) and of memory_hidden ({hidden}), "
                f"got {self.memory_heads}",
            )
        require(
            self.memory_gates in ("token", "chunk"),
            "memory_gates",
            f"token or chunk, got {self.memory_gates!r}",
        )
        require(
            self.memory_max_write >= 0, "memory_max_write", f">= 0, got {self.memory_max_write}"
        )


def silu_grad(z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """silu'(z) = s + a (1 - s), s = sigmoid(z), from a = silu(z) already at hand; written
    out because torch's fused silu_backward has no derivative (and a custom autograd function
    around it measured slower, forward and backward together)."""
    s = torch.sigmoid(z)
    return s + a * (1 - s)


class NeuralMemory(nn.Module):
    is_memory = True  # what `MemoryLM.memories` collects

    @property
    def write_units(self) -> int:
        """Writes per token that the bound counts: one per head."""
        return self.heads

    def __init__(self, d_model: int, cfg: MemoryConfig):
        super().__init__()
        self.cfg = cfg
        cfg.check_memory(d_model)
        self.heads = H = cfg.memory_heads
        d, h = d_model // H, (cfg.memory_hidden or d_model) // H  # per head
        self.proj = nn.Linear(d_model, 3 * d_model, bias=False)  # k, v, q
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.gates = nn.Linear(d_model, 3 * H)  # theta, eta, alpha of each head
        self.shapes = [(d, d)] if cfg.memory_depth == 1 else [(d, h), (h, d)]
        self.init_weights = nn.ParameterList(
            [nn.Parameter(torch.randn(H * r, c) / r**0.5) for r, c in self.shapes]
        )
        with torch.no_grad():  # start with slow writes, strong momentum, little forgetting
            self.gates.bias.copy_(torch.tensor([-2.0, 1.0, -4.0]).repeat(H))
        self.write_scale = 1.0
        self._last: list = []  # what `diagnostics` reads: of the last training batch
        # Training tokens written so far: a counter proving the memory acted; a buffer, so
        # it checkpoints with the model.
        self.register_buffer("writes", torch.zeros((), dtype=torch.long))
        self.register_buffer("update_norm", torch.zeros(()))  # ||S|| after the last batch
        self.register_buffer("bounded", torch.zeros((), dtype=torch.long))  # writes scaled down

    def init_state(self, batch: int):
        """(W..., S..., W_c..., pos): memory, momentum, the memory at the start of the
        current chunk, and the tokens already in that chunk (per row; rows in lockstep).
        Each weight is (batch, heads * rows, cols): rows first, so resets can pick rows."""
        ws = [w.unsqueeze(0).expand(batch, *w.shape) for w in self.init_weights]
        pos = torch.zeros(batch, dtype=torch.float64, device=ws[0].device)
        return (*ws, *[torch.zeros_like(w) for w in ws], *ws, pos)

    def _split(self, batch: int, state):
        """(weights, momenta, chunk-start weights, position in chunk) from `state` or the
        initial memory; one host read of the position per call."""
        n = len(self.init_weights)
        pos = position(state, 3 * n)
        state = self.init_state(batch) if state is None else state
        ws, ss, cs = ([self._by_head(w) for w in state[a * n : (a + 1) * n]] for a in range(3))
        return ws, ss, cs, pos

    def _by_head(self, w: torch.Tensor) -> torch.Tensor:
        """(B, H*rows, cols) -> (B*H, rows, cols): a head is a row of the inner batch."""
        if self.heads == 1:
            return w
        return w.reshape(w.shape[0] * self.heads, w.shape[1] // self.heads, w.shape[2])

    def _state(self, ws, ss, cs, pos: int):
        B = ws[0].shape[0] // self.heads
        p = torch.full((B,), float(pos), dtype=torch.float64, device=ws[0].device)
        return (*(w.reshape(B, -1, w.shape[-1]) for w in (*ws, *ss, *cs)), p)

    def _to_heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, T, H*w) -> (B*H, T, w): each head's slice a row of the inner batch."""
        if self.heads == 1:
            return t
        B, T = t.shape[:2]
        return t.view(B, T, self.heads, -1).transpose(1, 2).reshape(B * self.heads, T, -1)

    def _from_heads(self, y: torch.Tensor) -> torch.Tensor:
        """(B*H, T, w) -> (B, T, H*w): the heads' read-outs side by side."""
        if self.heads == 1:
            return y
        T = y.shape[1]
        return (
            y.view(-1, self.heads, T, y.shape[-1])
            .transpose(1, 2)
            .reshape(-1, T, self.heads * y.shape[-1])
        )

    def _inputs(self, x: torch.Tensor):
        """k, v, q (B*H, T, d/H) and the gates (B*H, T) of each head, a head a row."""
        k, v, q = (self._to_heads(t) for t in self.proj(x).chunk(3, dim=-1))
        # one sigmoid and one unbind for the three gates: their backward is one node each,
        # where a sigmoid per column read through `[..., j]` took three and three zero fills
        theta, eta, alpha = torch.sigmoid(self._to_heads(self.gates(x))).unbind(-1)
        theta = theta * (self.cfg.memory_theta_max * self.write_scale)
        eta = eta if self.cfg.memory_momentum else torch.zeros_like(theta)
        alpha = alpha if self.cfg.memory_forget else torch.zeros_like(theta)
        if self.write_scale != 1:  # forgetting is a write too
            alpha = (alpha * self.write_scale).clamp(max=1.0)
        return F.normalize(k, dim=-1), v, F.normalize(q, dim=-1), theta, eta, alpha

    @staticmethod
    def read(ws, q: torch.Tensor) -> torch.Tensor:
        """M_W(q) for q (B, n, d) and weights with a leading batch dim. Products of 3-D
        tensors are written `bmm`: `@` folds them through views whose backward nodes cost
        more than the product's own at these sizes (forward and backward 0.85x the time)."""
        if len(ws) == 1:
            return torch.bmm(q, ws[0])
        return torch.bmm(F.silu(torch.bmm(q, ws[0])), ws[1])

    @staticmethod
    def factors(ws, k: torch.Tensor, v: torch.Tensor):
        """Per-token gradients of ||M_W(k_t) - v_t||^2 at one memory W, each an outer product
        x_t (x) y_t: one (X, Y) pair per weight, X (B, n, rows), Y (B, n, cols)."""
        if len(ws) == 1:
            return [(k, 2 * (torch.bmm(k, ws[0]) - v))]
        z = torch.bmm(k, ws[0])
        a = F.silu(z)
        e = 2 * (torch.bmm(a, ws[1]) - v)
        dz = torch.bmm(e, ws[1].transpose(1, 2)) * silu_grad(z, a)
        return [(k, dz), (a, e)]

    @staticmethod
    @torch.no_grad()
    def write_size(fs, k_norm: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """||theta_t grad l_t||_F over all the memory's weights, from the factors `fs` and
        the keys' norms: ||x (x) y||_F = ||x|| ||y||, so no gradient is formed (the first
        factor of every memory is the key, whose norm a call computes once)."""
        norm = torch.linalg.vector_norm
        parts = [k_norm * norm(fs[0][1], dim=-1)]
        parts += [norm(X, dim=-1) * norm(Y, dim=-1) for X, Y in fs[1:]]
        return theta * (parts[0] if len(parts) == 1 else torch.hypot(*parts))

    def forward(self, x: torch.Tensor, state=None):
        """x (B, T, d) -> memory read-out (B, T, d) and the state after T."""
        return self.scan(x.shape[0], x.shape[1], x.shape[1], lambda t0, t1, ws: x, state)

    def scan(self, B: int, T: int, segment: int, inputs, state=None):
        """The memory over a call of T tokens whose inputs come `segment` tokens at a time:
        `inputs(t0, t1, ws)` returns x[:, t0:t1] (B, t1 - t0, d) and may read the memory
        `ws` as the tokens before t0 left it (`recall`), as a MAC segment does. Returns the
        read-outs (B, T, d) and the state after T.
        Two passes. Only the state is sequential (each chunk's gradients are taken at the
        memory the chunk before left), so the first pass carries W, S from chunk to chunk
        alone; the second reads every chunk of the call in one batch from its start state.
        At small widths the memory's time is its number of kernels, and the reads are most
        of them."""
        ws, ss, cs, pos = self._split(B, state)
        b, per_chunk = self.cfg.memory_chunk, self.cfg.memory_gates == "chunk"
        anchors = self._anchors(B * self.heads)
        segs, sizes, parts, cuts, groups = [], [], [], [0], []
        for s0 in range(0, T, segment):
            s1 = min(T, s0 + segment)
            k, v, q, theta, eta, alpha = part = self._inputs(inputs(s0, s1, ws))
            local = chunk_cuts(s1 - s0, pos, b)
            gates = segment_gates(local, eta, alpha, pos == 0, per_chunk)
            groups += [(len(segs) + i, len(segs) + j, g) for i, j, g in gates[0]]
            with torch.no_grad():
                k_norm = torch.linalg.vector_norm(k, dim=-1)
            # split, not sliced: a split's backward is one concatenation, where each slice's
            # would add a zero tensor of the whole call
            spans = [t1 - t0 for t0, t1 in zip(local, local[1:])]
            per = zip(*(t.split(spans, dim=1) for t in (k, v, theta, k_norm)))
            for i, (t0, t1, (k_c, v_c, theta_c, norm_c)) in enumerate(zip(local, local[1:], per)):
                fs = self.factors(cs, k_c, v_c)  # all at the chunk-start memory
                size = self.write_size(fs, norm_c, theta_c)
                rate = self._rate(theta_c, size)
                segs.append((fs, rate, ws, ss))
                ws, ss = ends(ws, ss, fs, rate, gates, i, anchors)
                sizes.append(size)
                pos = (pos + t1 - t0) % b
                if pos == 0:
                    cs = ws
            parts.append(part)
            cuts += [s0 + t for t in local[1:]]
        # the call's inputs but the keys, which only the first pass reads
        v, q, theta, eta, alpha = (torch.cat(t, 1) if len(parts) > 1 else t[0]
                                   for t in list(zip(*parts))[1:])  # fmt: skip
        y = self._from_heads(reads(segs, q, cuts, (merge_groups(groups), None), anchors))
        self._record(B * T, sizes, ws, ss, (v, theta, eta, alpha))
        return self.out(y), self._state(ws, ss, cs, pos)

    @torch.no_grad()
    def _record(self, tokens: int, sizes: list, ws, ss, inputs) -> None:
        """After a training call that wrote: the counters and what `diagnostics` reads."""
        if not (self.training and self.write_scale):
            return
        self.writes += tokens
        size = torch.cat(sizes, dim=1)
        over = size > self.cfg.memory_max_write if self.cfg.memory_max_write else None
        if over is not None:
            self.bounded += over.sum()
        self.update_norm.copy_(sum(s.flatten(1).norm(dim=1).mean() for s in ss))
        self._last = [kept(t) for t in (*ws, *inputs, size)] + [over]

    def recall_queries(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised queries q_t of x (B, T, d) in heads, for `recall` (the query third
        of the projection only: a read writes nothing, so needs no keys or values)."""
        d = x.shape[-1]
        w = self.proj.weight[2 * d :]
        bias = None if self.proj.bias is None else self.proj.bias[2 * d :]
        return F.normalize(self._to_heads(F.linear(x, w, bias)), dim=-1)

    def recall(self, q: torch.Tensor, ws) -> torch.Tensor:
        """M_W(q_t) W_O for queries q from `recall_queries`, W the memory `ws` that `scan`
        gives its inputs, nothing written: what a MAC segment retrieves before attending."""
        return self.out(self._from_heads(self.read(ws, q)))

    @property
    def diagnostics(self) -> dict[str, torch.Tensor]:
        """What a diverging memory shows first, of the last training batch: its weights'
        norm, the size of the values it is asked to store, its gates, the largest write
        before the bound and the share of writes bounded. Computed when read (at
        evaluations), not at every step."""
        if not self._last:
            return {}
        *ws, v, theta, eta, alpha, size, over = self._last
        return {
            "weight_norm": sum(w.flatten(1).norm(dim=1).mean() for w in ws),
            "value_norm": v.norm(dim=-1).mean(),
            "theta_mean": theta.mean(),
            "theta_max": theta.max(),
            "eta_mean": eta.mean(),
            "alpha_mean": alpha.mean(),
            "alpha_min": alpha.min(),
            "write_max": size.max(),
            "bound_rate": over.float().mean() if over is not None else size.new_zeros(()),
        }

    def _rate(self, theta: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        """The bounded write rate: theta_t times the factor (<= 1) that scales each token's write
        theta_t grad l_t, of Frobenius norm `size`, down to at most memory_max_write. Why: every
        gradient of a chunk is taken at the chunk's first memory, so a chunk writes up to
        `memory_chunk` full steps at once; a depth-2 memory's curvature grows with its weights, and
        past 2 / (chunk's summed rate) the next chunk's errors grow instead of shrink, squaring the
        weights' growth: carried along a stream (state.mode persistent) the weights reached 1e28
        within three chunks and the loss NaN (titans, hope_vs_titan size, seed 0, step 54). A
        bounded write keeps the growth per chunk at most linear, and forgetting then pulls it back.
        The factor is a constant to backpropagation, as a clipped gradient's scale is."""
        cap = self.cfg.memory_max_write
        return theta / (size / cap).clamp_(min=1) if cap else theta

    def _anchors(self, rows: int):
        """The point forgetting decays each weight toward (None: zero), for `rows` inner
        rows: W_0 itself with one head, each head's W_0 per row (rows, r, c) with more."""
        if self.cfg.memory_forget_to != "init":
            return [None] * len(self.init_weights)
        if self.heads == 1:
            return list(self.init_weights)
        H = self.heads
        return [w.view(1, H, r, c).expand(rows // H, H, r, c).reshape(rows, r, c)
                for w, (r, c) in zip(self.init_weights, self.shapes)]  # fmt: skip

    def reference_forward(self, x: torch.Tensor, state=None, chunk: int | None = None):
        """The recurrence token by token, each gradient by autograd at the memory of its
        chunk's start (chunk 1: the memory just before the token), the chunk grid continuing
        from `state`'s position, for the tests."""
        B, T, _ = x.shape
        chunk = chunk or self.cfg.memory_chunk
        ws, ss, cs, pos = self._split(B, state)
        k, v, q, theta, eta, alpha = self._inputs(x)
        R = k.shape[0]  # inner rows: a row per head of each sequence
        anchors = self._anchors(R)
        at = [c.detach().requires_grad_(True) for c in cs]
        ys = []
        for t in range(T):
            if pos == 0:
                at = [w.detach().requires_grad_(True) for w in ws]
            with torch.enable_grad():
                pred = self.read(at, k[:, t : t + 1].detach())
                loss = (pred - v[:, t : t + 1].detach()).pow(2).sum()
                gs = torch.autograd.grad(loss, at)
            size = (theta[:, t] * sum(g.pow(2).sum((-1, -2)) for g in gs).sqrt()).detach()
            rate = self._rate(theta[:, t], size).view(R, 1, 1)
            gated = pos == 0 or self.cfg.memory_gates == "token"
            for j, w0 in enumerate(anchors):
                if not gated:  # inside a chunk under memory_gates chunk: the write alone
                    ss[j] = ss[j] - rate * gs[j]
                    ws[j] = ws[j] - rate * gs[j]
                    continue
                ss[j] = eta[:, t].view(R, 1, 1) * ss[j] - rate * gs[j]
                a = alpha[:, t].view(R, 1, 1)
                ws[j] = (1 - a) * ws[j] + ss[j] + (0 if w0 is None else a * w0)
            ys.append(self.read(ws, q[:, t : t + 1]))
            pos = (pos + 1) % chunk
        cs = ws if pos == 0 else [a.detach() for a in at]
        return self.out(self._from_heads(torch.cat(ys, dim=1))), self._state(ws, ss, cs, pos)
