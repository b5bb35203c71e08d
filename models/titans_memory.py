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
fixed, both recurrences unroll into products of the gates (`_ends`, `_reads`: cumulative
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

from models.common import require


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


def _silu_grad(z: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


class NeuralMemory(nn.Module):
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
        state = self.init_state(batch) if state is None else state
        n = len(self.init_weights)
        pos = int(state[3 * n][0].item())
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

    def _inputs(self, x: torch.Tensor):
        """k, v, q (B*H, T, d/H) and the gates (B*H, T) of each head, a head a row."""
        k, v, q = self.proj(x).chunk(3, dim=-1)
        g = self.gates(x)
        if self.heads > 1:
            B, T, H = x.shape[0], x.shape[1], self.heads
            k, v, q, g = (t.view(B, T, H, -1).transpose(1, 2).reshape(B * H, T, -1)
                          for t in (k, v, q, g))  # fmt: skip
        theta = self.cfg.memory_theta_max * torch.sigmoid(g[..., 0]) * self.write_scale
        eta = torch.sigmoid(g[..., 1]) if self.cfg.memory_momentum else torch.zeros_like(theta)
        alpha = torch.sigmoid(g[..., 2]) if self.cfg.memory_forget else torch.zeros_like(theta)
        alpha = (alpha * self.write_scale).clamp(max=1.0)  # forgetting is a write too
        return F.normalize(k, dim=-1), v, F.normalize(q, dim=-1), theta, eta, alpha

    @staticmethod
    def read(ws, q: torch.Tensor) -> torch.Tensor:
        """M_W(q) for q (B, n, d) and weights with a leading batch dim."""
        if len(ws) == 1:
            return q @ ws[0]
        return F.silu(q @ ws[0]) @ ws[1]

    @staticmethod
    def factors(ws, k: torch.Tensor, v: torch.Tensor):
        """Per-token gradients of ||M_W(k_t) - v_t||^2 at one memory W, each an outer product
        x_t (x) y_t: one (X, Y) pair per weight, X (B, n, rows), Y (B, n, cols)."""
        if len(ws) == 1:
            return [(k, 2 * (k @ ws[0] - v))]
        z = k @ ws[0]
        a = F.silu(z)
        e = 2 * (a @ ws[1] - v)
        dz = (e @ ws[1].transpose(-1, -2)) * _silu_grad(z)
        return [(k, dz), (a, e)]

    def forward(self, x: torch.Tensor, state=None):
        """x (B, T, d) -> memory read-out (B, T, d) and the state after T."""
        B, T, _ = x.shape
        ws, ss, cs, pos = self._split(B, state)
        k, v, q, theta, eta, alpha = self._inputs(x)
        b, cuts = self.cfg.memory_chunk, [0]
        while cuts[-1] < T:  # segments: the rest of the current chunk, then whole chunks
            cuts.append(min(T, cuts[-1] + b - (pos + cuts[-1]) % b))
        gates = self._segment_gates(cuts, eta, alpha, pos == 0)
        # Two passes. Only the state is sequential (each chunk's gradients are taken at the
        # memory the chunk before left), so the first pass carries W, S from chunk to chunk
        # alone; the second reads every chunk in one batch from its start state. At small
        # widths the memory's time is its number of kernels, and the reads are most of them.
        segs, sizes = [], []
        for i, (t0, t1) in enumerate(zip(cuts, cuts[1:])):
            sl = slice(t0, t1)
            fs = self.factors(cs, k[:, sl], v[:, sl])  # all at the chunk-start memory
            # ||x (x) y||_F = ||x|| ||y||: each token's gradient norm without forming it
            with torch.no_grad():
                size = theta[:, sl] * sum(X.pow(2).sum(-1) * Y.pow(2).sum(-1) for X, Y in fs).sqrt()
            rate = theta[:, sl] * self._bound(size)
            segs.append((fs, rate, ws, ss))
            ws, ss = self._ends(ws, ss, fs, rate, gates, i)
            sizes.append(size)
            pos = (pos + t1 - t0) % b
            if pos == 0:
                cs = ws
        y = self._reads(segs, q, cuts, gates)
        if self.heads > 1:
            y = y.view(B, self.heads, T, -1).transpose(1, 2).reshape(B, T, -1)
        if self.training and self.write_scale:
            self.writes += B * T
            with torch.no_grad():
                size = torch.cat(sizes, dim=1)
                over = size > self.cfg.memory_max_write if self.cfg.memory_max_write else None
                if over is not None:
                    self.bounded += over.sum()
                self.update_norm.copy_(sum(s.flatten(1).norm(dim=1).mean() for s in ss))
                self._last = [t.detach() for t in (*ws, v, theta, eta, alpha, size)] + [over]
        return self.out(y), self._state(ws, ss, cs, pos)

    def recall(self, x: torch.Tensor, state=None) -> torch.Tensor:
        """M_W(q_t) W_O for every token of x (B, T, d), W the memory in `state` (W_0 when
        None), nothing written: what a MAC segment retrieves before attending."""
        B, T, _ = x.shape
        q = self.proj(x)[..., 2 * x.shape[-1] :]
        if self.heads > 1:
            q = q.view(B, T, self.heads, -1).transpose(1, 2).reshape(B * self.heads, T, -1)
        y = self.read(self._split(B, state)[0], F.normalize(q, dim=-1))
        if self.heads > 1:
            y = y.view(B, self.heads, T, -1).transpose(1, 2).reshape(B, T, -1)
        return self.out(y)

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

    def _bound(self, size: torch.Tensor) -> torch.Tensor:
        """The factor (<= 1) that scales each token's write theta_t grad l_t, of Frobenius norm
        `size`, down to at most memory_max_write. Why: every gradient of a chunk is taken at
        the chunk's first memory, so a chunk writes up to `memory_chunk` full steps at once;
        a depth-2 memory's curvature grows with its weights, and past 2 / (chunk's summed
        rate) the next chunk's errors grow instead of shrink, squaring the weights' growth:
        carried along a stream (state.mode persistent) the weights reached 1e28 within three
        chunks and the loss NaN (titans, hope_vs_titan size, seed 0, step 54). A bounded write
        keeps the growth per chunk at most linear, and forgetting then pulls it back. The
        factor is a constant to backpropagation, as a clipped gradient's scale is."""
        cap = self.cfg.memory_max_write
        if not cap:
            return torch.ones_like(size)
        return cap / torch.maximum(size, torch.full_like(size, cap))

    @staticmethod
    def _decay(rate: torch.Tensor):
        """For per-token factors r (B, n): P[t, s] = prod_{s<u<=t} r_u (lower triangle) and
        P0[t] = prod_{u<=t} r_u, through cumulative log sums."""
        logs = torch.log(rate.clamp(min=1e-30)).cumsum(-1)
        n = rate.shape[-1]
        lower = torch.ones(n, n, dtype=torch.bool, device=rate.device).tril()
        diff = logs.unsqueeze(-1) - logs.unsqueeze(-2)
        return torch.exp(diff.masked_fill(~lower, float("-inf"))), torch.exp(logs)

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

    # Eager under torch.compile: compiled with bf16 autocast, the memory's backward gave NaN
    # at the second step of a titans trial (eager bf16 and compiled fp32 trained normally).
    @torch.compiler.disable
    def _segment_gates(self, cuts: list[int], eta: torch.Tensor, alpha: torch.Tensor, whole: bool):
        """What the closed form (`_reads`) needs of the gates alone (they do not depend on
        the memory), per segment [cuts[i], cuts[i+1]): P = F E, A = F E0 and F0, for groups
        of equally long consecutive segments stacked as (B, segments, ...) (one group for a
        call on the chunk grid); and per segment, what its last W and S need (`_ends`): the
        last rows of P and E, and A, F0, E0 at its last token. `whole`: the first segment
        starts a chunk (every later one does)."""
        spans = list(zip(cuts, cuts[1:]))
        B, groups, i = eta.shape[0], [], 0
        while i < len(spans):
            j, n = i + 1, spans[i][1] - spans[i][0]
            while j < len(spans) and spans[j][1] - spans[j][0] == n:
                j += 1
            t0, t1 = spans[i][0], spans[j - 1][1]
            shape = (B, j - i, n)
            e, a = eta[:, t0:t1].reshape(shape), alpha[:, t0:t1].reshape(shape)
            if self.cfg.memory_gates == "chunk":
                starts = torch.tensor([k > 0 or whole for k in range(i, j)], device=e.device)
                both = self._chunk_gate_products(e, a, starts)
            else:
                both = self._gate_products(e, a)
            groups.append((i, j, both))
            i = j
        ends = []
        for _, _, (P, A, F0, E0, E_last) in groups:
            lasts = torch.stack([A[..., -1], F0[..., -1], E0[..., -1]], dim=-1)[..., None, None]
            ends += list(zip(zip(P[..., -1, :].unbind(1), E_last.unbind(1)),
                             (tuple(x.unbind(1)) for x in lasts.unbind(1))))  # fmt: skip
        return [(i, j, both[:3]) for i, j, both in groups], ends

    @staticmethod
    def _chunk_gate_products(eta: torch.Tensor, alpha: torch.Tensor, starts: torch.Tensor):
        """`_gate_products` under memory_gates chunk, for segments (B, c, n) of which
        `starts` (c,) begin a chunk: there S_t = eta_f S - sum_{s<=t} r_s g_s and
        W_t = (1 - alpha_f) W + S_t, so P = E = 1 (lower), A = E0 = eta_f, F0 = 1 - alpha_f;
        a segment that continues a chunk adds its writes to the carried W and S alone
        (A = 0, E0 = F0 = 1)."""
        B, c, n = eta.shape
        st = starts.view(1, c, 1)
        first_eta, first_keep = eta[..., :1], 1 - alpha[..., :1]
        E0 = torch.where(st, first_eta, torch.ones_like(first_eta)).expand(B, c, n)
        F0 = torch.where(st, first_keep, torch.ones_like(first_keep)).expand(B, c, n)
        A = torch.where(st, first_eta, torch.zeros_like(first_eta)).expand(B, c, n)
        P = torch.ones(n, n, dtype=eta.dtype, device=eta.device).tril().expand(B, c, n, n)
        return P, A, F0, E0, torch.ones_like(eta)

    def _gate_products(self, eta: torch.Tensor, alpha: torch.Tensor):
        D, D0 = self._decay(torch.stack([eta, 1 - alpha]))  # both gates' decays in one pass
        (E, F_), (E0, F0) = D, D0
        n = eta.shape[-1]
        PA = F_ @ torch.cat([E, E0.unsqueeze(-1)], dim=-1)
        return PA[..., :n], PA[..., n], F0, E0, E[..., -1, :]

    # The closed form of a chunk, without forming any W_t (no loop over tokens). With
    # u_s = -r_s x_s (x) y_s (r the bounded write rate) and the chunk's start W, S:
    #   S_t = sum_s E[t,s] u_s + E0[t] S  (E from eta),  W_t = sum_tau F[t,tau] S_tau + F0[t] W
    #   (F from 1 - alpha), so W_t = sum_s K[t,s] x_s (x) y_s + A[t] S + F0[t] W with
    #   K = F E (-r), A = F E0; and a read h W_t = sum_s K[t,s] (h . x_s) y_s + A[t] h S +
    #   F0[t] h W is an (n, n) matrix times Y: B x d x h per weight, not B x n x d x h.
    # With forgetting toward W_0 the same holds for W - W_0.
    @torch.compiler.disable
    def _ends(self, ws, ss, fs, rate, gates, i: int):
        """The W and S after segment i (from its start `ws`, `ss`, factors and rates)."""
        (k_last, e_last), (A, F0, E0) = gates[1][i]
        k_last, e_last = k_last * -rate, e_last * -rate  # of x_s (x) y_s in the last W, S
        new_ws, new_ss = [], []
        for (X, Y), w, s, w0 in zip(fs, ws, ss, self._anchors(ws[0].shape[0])):
            Xt = X.transpose(-1, -2)
            last_w = Xt @ (k_last.unsqueeze(-1) * Y) + A * s + F0 * w
            last_s = Xt @ (e_last.unsqueeze(-1) * Y)
            if w0 is not None:
                last_w = last_w + (1 - F0) * w0
            new_ws.append(last_w)
            new_ss.append(last_s + E0 * s)
        return new_ws, new_ss

    @torch.compiler.disable
    def _reads(self, segs, q: torch.Tensor, cuts: list[int], gates) -> torch.Tensor:
        """Every read-out y_t = M_{W_t}(q_t), one batch per group of equally long segments:
        `segs` holds each segment's factors, rates and start W, S."""
        B, out = q.shape[0], []
        for i, j, (P, A, F0) in gates[0]:
            part = segs[i:j]
            c, n = j - i, (cuts[j] - cuts[i]) // (j - i)
            K = P * -torch.stack([r for _, r, _, _ in part], dim=1).unsqueeze(2)
            h = q[:, cuts[i] : cuts[j]].reshape(B, c, n, -1)
            for m, w0 in enumerate(self._anchors(B)):
                X, Y, w, s = (torch.stack(t, dim=1) for t in zip(*(
                    (*fs[m], ws[m], ss[m]) for fs, _, ws, ss in part)))  # fmt: skip
                z = ((h @ X.transpose(-1, -2)) * K) @ Y + A[..., None] * (h @ s)
                z = z + F0[..., None] * (h @ w)
                if w0 is not None:
                    w0 = w0 if w0.dim() == 2 else w0.unsqueeze(1)  # (rows, segments, r, c)
                    z = z + (1 - F0[..., None]) * (h @ w0)
                h = F.silu(z) if m + 1 < len(self.init_weights) else z
            out.append(h.reshape(B, c * n, -1))
        return torch.cat(out, dim=1) if len(out) > 1 else out[0]

    def reference_forward(self, x: torch.Tensor, state=None, chunk: int | None = None):
        """The recurrence token by token, each gradient by autograd at the memory of its
        chunk's start (chunk 1: the memory just before the token), the chunk grid continuing
        from `state`'s position, for the tests."""
        B, T, _ = x.shape
        chunk = chunk or self.cfg.memory_chunk
        ws, ss, cs, pos = self._split(B, state)
        k, v, q, theta, eta, alpha = self._inputs(x)
        R = k.shape[0]  # inner rows: a row per head of each sequence
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
            rate = (theta[:, t] * self._bound(size)).view(R, 1, 1)
            gated = pos == 0 or self.cfg.memory_gates == "token"
            for j, w0 in enumerate(self._anchors(R)):
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
        y = torch.cat(ys, dim=1)
        if self.heads > 1:
            y = y.view(B, self.heads, T, -1).transpose(1, 2).reshape(B, T, -1)
        return self.out(y), self._state(ws, ss, cs, pos)
