"""A Titans memory whose momentum is a deep momentum memory (`model.memory_optimizer:
deep_momentum`): the Nested Learning paper's DMGD as the memory's own inner optimizer.

Notation (models/titans_memory.py defines the memory, models/deep_momentum.py the momentum
memory m_phi; per batch row and head, per token t; j runs over the memory's weights)
    g_tj    = grad_(W_j) l_t(W_c(t))          the token's gradient, at its chunk's start memory
    r_t     = theta_t, scaled down by the write bound          the token's write rate
    phi_tj  = phi_0j + eta_t (phi_(t-1)j - phi_0j) - r_t grad L2(phi_(t-1)j; g_tj)
    S_tj    = -m_(phi_tj)(g_tj)
    W_tj    = (1 - alpha_t) W_(t-1)j + S_tj    (memory_forget_to init: W - W_0 on both sides)
    y_t     = M_(W_t)(q_t) W_O
The momentum gate eta_t is the momentum memory's retention and the write rate its step size,
so with its key layer at zero the read is B_tj = eta_t B_(t-1)j + r_t g_tj and this is the
Titans memory exactly (tested against it).
The closed form (`forward`; `reference_forward` is the loop above, for the tests): a token's
gradient is an outer product g_t = x_t (x) y_t, so its rows are x_ti y_t and its keys
sign(x_ti) yhat_t (yhat = y / ||y||); tanh is odd, so every row sum of the momentum
memory's step is one of vectors (per weight j; B is the momentum's classic part):
    sigma_t = tanh(yhat_t A1_(t-1)^T)                                      (h values)
    A1_t    = A1_0 + eta_t (A1_(t-1) - A1_0)
              + r_t ||x_t||_1 ((y_t A2_(t-1) / h) * (1 - sigma_t^2))^T yhat_t
    A2_t    = eta_t A2_(t-1) + r_t ||x_t||_1 y_t^T sigma_t / h
    m_(phi_t)(g_t) = B_t + sign(x_t) (x) d_t,   d_t = tanh(yhat_t A1_t^T) A2_t^T / h
so W_t is the Titans memory's W_t at the rates r minus sum_(s<=t) F[t, s] sign(x_s) (x) d_s:
the deep reads are one more rank-one write per token, forgotten but not carried by the
momentum, and a chunk's reads and last W are the products of models/titans_scan.py over
2n writes. Only sigma_t needs a loop over tokens (tanh of a key against A1, which the
token before changed), at n x h per token instead of rows x cols x h, with the weights'
loops stacked as one (`momentum_reads`); the reads of A2 are products afterwards.
Update frequencies: phi (B, A1, A2 of each weight) is inner state like W and S, written at
every token, carried or reset with them; A1's starting point phi_0 is a fixed random draw
(a buffer). State: the memory's (W, S, W_c, position) with S = -B, then each weight's A1 and
A2. `deep_share` (the deep part's share of the last token's read, per call) proves it acted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from models.deep_momentum import deep_momentum_step, init_keys
from models.titans_memory import MemoryConfig, NeuralMemory
from models.titans_scan import chunk_cuts, decay, ends, merge_groups, reads


def momentum_reads(l1, Y, a1, a2, a1_0, E, E0, rate):
    """The momentum memories' deep reads d_t (R, n, c) of a segment's n tokens, and A1, A2
    after it, from the gradients' factors (||x_t||_1 (R, n) and y_t, Y (R, n, cols)), A1
    (R, h, c), A2 (R, c, h), A1's anchor A1_0 (R, h, c), the momentum gates' decays
    E[t, u] (R, n, n) and E0[t] (R, n) (`decay`, models/titans_scan.py) and the write rates
    r (R, n):
    `deep_momentum_step` on u_t = x_t (x) y_t with its row sums in closed form (the
    notation's rank-one identities), so that a token costs n x h, not rows x cols x h.
    A1 and A2 are sums of the segment's rank-one steps, decayed by the momentum gates:
        A1_t - A1_0 = E0[t] (A1_s - A1_0) + sum_(u<=t) E[t, u] beta_u^T yhat_u
        A2_t        = E0[t] A2_s          + sum_(u<=t) E[t, u] yb_u^T sigma_u
    with yb_u = r_u ||x_u||_1 y_u / h and beta_u = (yb_u A2_(u-1)) * (1 - sigma_u^2), so each
    token's sigma_t and yb_t A2_(t-1) are the segment's start read plus a weighted sum of
    the tokens before it (Gram matrices of yhat and of yb): only those h-vectors are a loop,
    each token adding its share to every later token's; the reads and the last A1, A2 are
    products over the segment afterwards."""
    R, n, c = Y.shape
    h = a1.shape[-2]
    yh = Y / Y.norm(dim=-1, keepdim=True).clamp_min(1e-30)  # y_t / ||y_t||: each key row
    yb = Y * (rate * l1 / h).unsqueeze(-1)
    # at phi_(t-1): E[t-1, u] (zero at u >= t) and E0[t-1] (1 at t = 0)
    Ep, E0p = F.pad(E[:, :-1], (0, 0, 1, 0)), F.pad(E0[:, :-1], (1, 0), value=1.0)[..., None]
    base, start = torch.bmm(yh, a1_0.transpose(1, 2)), torch.bmm(yh, (a1 - a1_0).transpose(1, 2))
    gram = torch.bmm(yh, yh.transpose(1, 2))
    pre = base + E0p * start  # yhat_t A1_(t-1)^T, once every token before has added its share
    q = E0p * torch.bmm(yb, a2)  # yb_t A2_(t-1), likewise
    S, Bt = _Sigmas.apply(pre, q, Ep * gram, Ep * torch.bmm(yb, yb.transpose(1, 2)))
    # the reads, at phi_t: tanh(yhat_t A1_t^T) A2_t^T / h
    read = torch.tanh(torch.baddbmm(base + E0[..., None] * start, E * gram, Bt))
    d = torch.bmm(torch.bmm(read, S.transpose(1, 2)) * E, yb)
    d = (d + E0[..., None] * torch.bmm(read, a2.transpose(1, 2))) / h
    e0, last = E0[:, -1, None, None], E[:, -1, :, None]  # of the segment's last token
    a1 = a1_0 + e0 * (a1 - a1_0) + torch.bmm((Bt * last).transpose(1, 2), yh)
    a2 = e0 * a2 + torch.bmm((yb * last).transpose(1, 2), S)
    return d, a1, a2


class _Sigmas(torch.autograd.Function):
    """The loop of `momentum_reads`: for t = 0 .. n-1 (per row; vectors of h)
        sigma_t = tanh(pre_t + sum_(u<t) Gp[t, u] beta_u)
        beta_t  = (q_t + sum_(u<t) Gq[t, u] sigma_u) (1 - sigma_t^2)
    -> sigma, beta (R, n, h), from pre, q (R, n, h) and Gp, Gq (R, n, n) (only their strict
    lower triangles are read). Its backward is the same loop run backwards on the adjoints,
    written out: autograd's backward of the loop, a node per operation and token, took 2.5
    times its forward (compiled), most of this memory's time at small widths. First order
    only: nothing differentiates the memory twice."""

    @staticmethod
    def forward(ctx, pre, q, Gp, Gq):
        n = pre.shape[1]
        below = torch.ones(n, n, dtype=torch.bool, device=pre.device).tril(-1)
        Gp, Gq = Gp * below, Gq * below  # so that the rows already read stay as they were
        pre, q = pre.clone(), q.clone()
        S, Bt = torch.empty_like(pre), torch.empty_like(pre)
        for t in range(n):
            sig = torch.tanh(pre[:, t])
            beta = q[:, t] * (1 - sig * sig)
            S[:, t], Bt[:, t] = sig, beta
            # token t's share in every later token's pre and q
            pre += Gp[:, :, t, None] * beta[:, None]
            q += Gq[:, :, t, None] * sig[:, None]
        ctx.save_for_backward(q, S, Bt, Gp, Gq)
        return S, Bt

    @staticmethod
    @once_differentiable
    def backward(ctx, gS, gB):
        Q, S, Bt, Gp, Gq = ctx.saved_tensors
        gS = torch.zeros_like(S) if gS is None else gS
        gB = torch.zeros_like(S) if gB is None else gB
        # what the later tokens send back to each beta_u and sigma_u through pre and q
        to_beta, to_sig = torch.zeros_like(S), torch.zeros_like(S)
        a_pre, a_q = torch.empty_like(S), torch.empty_like(S)
        for u in reversed(range(S.shape[1])):
            sig = S[:, u]
            slope = 1 - sig * sig
            g_beta = gB[:, u] + to_beta[:, u]
            g_sig = gS[:, u] + to_sig[:, u] - 2 * Q[:, u] * sig * g_beta
            a_q[:, u], a_pre[:, u] = g_beta * slope, g_sig * slope
            to_beta += Gp[:, u, :, None] * a_pre[:, u, None]
            to_sig += Gq[:, u, :, None] * a_q[:, u, None]
        below = torch.ones(S.shape[1], S.shape[1], dtype=torch.bool, device=S.device).tril(-1)
        g_Gp = torch.bmm(a_pre, Bt.transpose(1, 2)) * below
        g_Gq = torch.bmm(a_q, S.transpose(1, 2)) * below
        return a_pre, a_q, g_Gp, g_Gq


class DeepMomentumMemory(NeuralMemory):
    def __init__(self, d_model: int, cfg: MemoryConfig):
        super().__init__(d_model, cfg)
        self.hidden = cfg.memory_deep_hidden
        for j, (_, c) in enumerate(self.shapes):
            self.register_buffer(f"deep_keys{j}", init_keys(self.hidden, c))
        self.register_buffer("deep_share", torch.zeros(()))

    def init_state(self, batch: int):
        """The memory's state, then A1 (batch, heads * h, cols) and A2 (batch, heads * cols,
        h) of each weight, so that `_by_head` splits them as it splits the weights."""
        a1s, a2s = [], []
        for j, (_, c) in enumerate(self.shapes):
            keys = getattr(self, f"deep_keys{j}").to(self.init_weights[j].dtype)
            a1s.append(keys.repeat(self.heads, 1).expand(batch, -1, -1))
            a2s.append(keys.new_zeros(batch, self.heads * c, self.hidden))
        return (*super().init_state(batch), *a1s, *a2s)

    def forward(self, x: torch.Tensor, state=None):
        """x (B, T, d) -> memory read-out (B, T, d) and the state after T, in the notation's
        closed form: per segment of the chunk grid, sigma's loop (`momentum_reads`) and the
        segment's last W, S over its tokens' 2n writes; then every read of the call in one
        pass (models/titans_scan.py's `ends` and `reads`, as the Titans memory's `scan`)."""
        B, T, _ = x.shape
        n = len(self.shapes)
        # no host read of the position when no state is carried (under torch.compile a
        # read splits the graph)
        ws, ss, cs, pos = self._split(B, None if state is None else state[: 3 * n + 1])
        state = self.init_state(B) if state is None else state
        a1s, a2s = ([self._by_head(a) for a in state[3 * n + 1 + i * n :][:n]] for i in (0, 1))
        k, v, q, theta, eta, alpha = self._inputs(x)
        anchors = self._anchors(k.shape[0])
        with torch.no_grad():
            k_norm = torch.linalg.vector_norm(k, dim=-1)
        keys0 = [getattr(self, f"deep_keys{j}").to(x.dtype) for j in range(n)]
        segs, groups, sizes, cuts = [], [], [], chunk_cuts(T, pos, self.cfg.memory_chunk)
        for t0, t1 in zip(cuts, cuts[1:]):
            fs = self.factors(cs, k[:, t0:t1], v[:, t0:t1])  # all at the chunk's start
            size = self.write_size(fs, k_norm[:, t0:t1], theta[:, t0:t1])
            rate, mu, keep = self._rate(theta[:, t0:t1], size), eta[:, t0:t1], 1 - alpha[:, t0:t1]
            # the decays of momentum (E) and forgetting (F: what it leaves at t of token s's
            # deep read), then P = F E and A = F E0 of models/titans_scan.py
            (E, Fk), (E0, F0) = decay(torch.stack([mu, keep]))
            PA = torch.bmm(Fk, torch.cat([E, E0.unsqueeze(-1)], -1))
            P, A = PA[..., :-1], PA[..., -1]
            ds = self._deep_reads(fs, a1s, a2s, keys0, E, E0, rate)
            # token s's weight change: -r_s x_s (x) y_s through the momentum (coefficients
            # P (-r)), then -sign(x_s) (x) d_s, its deep read, forgotten alone (F, rate -1)
            # and never in S: titans_scan's `reads` and `ends` over the 2n writes
            writes = [(torch.cat([X, torch.sign(X)], 1), torch.cat([Y, -d], 1))
                      for (X, Y), d in zip(fs, ds)]  # fmt: skip
            rates, Pw = torch.cat([rate, -torch.ones_like(rate)], -1), torch.cat([P, Fk], -1)
            groups.append((len(segs), len(segs) + 1, (Pw[:, None], A[:, None], F0[:, None])))
            segs.append((writes, rates, ws, ss))
            in_s = torch.cat([E[:, -1], torch.zeros_like(rate)], -1)
            pair = -torch.stack([Pw[:, -1], in_s], -1)  # (R, 2n, 2): to the last W, S
            lasts = tuple(g[:, -1, None, None] for g in (A, F0, E0))
            ws, ss = ends(ws, ss, writes, rates, (None, [(pair, lasts)]), 0, anchors)
            sizes.append(size)
            pos = (pos + t1 - t0) % self.cfg.memory_chunk
            if pos == 0:
                cs = list(ws)
        self._record(B * T, sizes, ws, ss, (v, theta, eta, alpha))
        if self.training and self.write_scale:
            self._share(writes, ss)
        y = reads(segs, q, cuts, (merge_groups(groups), None), anchors)
        y = self.out(self._from_heads(y))
        rows = lambda ts: (t.reshape(B, -1, t.shape[-1]) for t in ts)  # noqa: E731
        return y, (*self._state(ws, ss, cs, pos), *rows(a1s), *rows(a2s))

    def _deep_reads(self, fs, a1s, a2s, keys0, E, E0, rate) -> list:
        """`momentum_reads` of every weight (A1s, A2s replaced by their values after); the
        weights' recurrences stacked as rows of one when their widths agree (a depth-2
        memory of hidden width d), as at these sizes each step's time is its kernels."""
        count = len(fs)
        if count == 1 or len({Y.shape[-1] for _, Y in fs}) > 1:
            out = [momentum_reads(X.abs().sum(-1), Y, a1s[j], a2s[j],
                                  keys0[j].expand_as(a1s[j]), E, E0, rate)
                   for j, (X, Y) in enumerate(fs)]  # fmt: skip
        else:
            l1 = torch.cat([X.abs().sum(-1) for X, _ in fs])
            a1_0 = torch.cat([k.expand_as(a) for k, a in zip(keys0, a1s)])
            d, a1, a2 = momentum_reads(l1, torch.cat([Y for _, Y in fs]), torch.cat(a1s),
                                       torch.cat(a2s), a1_0, E.repeat(count, 1, 1),
                                       E0.repeat(count, 1), rate.repeat(count, 1))  # fmt: skip
            out = list(zip(d.chunk(count), a1.chunk(count), a2.chunk(count)))
        for j, (_, a1, a2) in enumerate(out):
            a1s[j], a2s[j] = a1, a2
        return [d for d, _, _ in out]

    @torch.no_grad()
    def _share(self, writes, ss) -> None:
        """`deep_share`: ||deep read|| / ||read|| of the call's last token, averaged over the
        weights and rows; its read is B_T + sign(x_T) (x) d_T with B_T = -S_T."""
        shares = []
        for (X, Y), s in zip(writes, ss):
            deep = -X[:, -1].unsqueeze(-1) * Y[:, -1].unsqueeze(-2)  # X: sign(x), Y: -d
            read = (deep - s).flatten(1).norm(dim=1).clamp_min(1e-30)
            shares.append(deep.flatten(1).norm(dim=1) / read)
        self.deep_share.copy_(torch.stack(shares).mean())

    def reference_forward(self, x: torch.Tensor, state=None):
        """The recurrence token by token with every weight W_t formed, as the notation writes
        it (`deep_momentum_step` on each token's gradient), for the tests; counts nothing and
        returns, beside the read-outs and state, the last token's deep share."""
        B, T, _ = x.shape
        state = self.init_state(B) if state is None else state
        n = len(self.shapes)
        ws, ss, cs, pos = self._split(B, state[: 3 * n + 1])
        a1s, a2s = ([self._by_head(a) for a in state[3 * n + 1 + i * n :][:n]] for i in (0, 1))
        k, v, q, theta, eta, alpha = self._inputs(x)
        R = k.shape[0]
        anchors = self._anchors(R)
        with torch.no_grad():
            k_norm = torch.linalg.vector_norm(k, dim=-1)
        keys0 = [getattr(self, f"deep_keys{j}").to(x.dtype) for j in range(n)]
        ys, shares = [], []
        for t in range(T):
            fs = self.factors(cs, k[:, t : t + 1], v[:, t : t + 1])  # at the chunk's start
            size = self.write_size(fs, k_norm[:, t : t + 1], theta[:, t : t + 1])
            rate = self._rate(theta[:, t : t + 1], size).view(R, 1, 1)
            mu, a = eta[:, t].view(R, 1, 1), alpha[:, t].view(R, 1, 1)
            shares = []
            for j, ((X, Y), w0) in enumerate(zip(fs, anchors)):
                g = X.transpose(-1, -2) @ Y  # (R, rows, cols): the token's gradient
                read, b, a1s[j], a2s[j], share = deep_momentum_step(
                    g, -ss[j], a1s[j], a2s[j], keys0[j], mu, rate
                )
                ss[j] = -b
                shares.append(share)
                ws[j] = (1 - a) * ws[j] - read + (0 if w0 is None else a * w0)
            ys.append(self.read(ws, q[:, t : t + 1]))
            pos = (pos + 1) % self.cfg.memory_chunk
            if pos == 0:
                cs = list(ws)  # a copy: ws's entries are replaced token by token
        y = self.out(self._from_heads(torch.cat(ys, dim=1)))
        rows = lambda ts: (t.reshape(B, -1, t.shape[-1]) for t in ts)  # noqa: E731
        state = (*self._state(ws, ss, cs, pos), *rows(a1s), *rows(a2s))
        return y, state, torch.stack(shares).mean().detach()

    def scan(self, B: int, T: int, segment: int, inputs, state=None):
        raise NotImplementedError("deep_momentum has no segment reads (MAC): refused by config")

    @property
    def diagnostics(self) -> dict[str, torch.Tensor]:
        out = super().diagnostics
        return {**out, "deep_share": self.deep_share.clone()} if out else out
