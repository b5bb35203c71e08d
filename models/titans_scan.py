"""The closed form of a Titans memory's chunk (`models/titans_memory.py`): the memory after,
and the read-outs during, a run of tokens whose write gradients are fixed, with no loop over
tokens and no per-token weight formed.

Notation (one segment of n tokens, per batch row; u_s = -r_s x_s (x) y_s the write of token
s, r the bounded write rate, x (x) y its gradient's outer-product factors; W, S the memory and
momentum at the segment's start)
    E[t, s] = prod_{s<u<=t} eta_u,  E0[t] = prod_{u<=t} eta_u      (momentum decays)
    F[t, s] = prod_{s<u<=t} (1 - alpha_u),  F0[t] likewise          (forgetting)
    S_t = sum_s E[t,s] u_s + E0[t] S,   W_t = sum_tau F[t,tau] S_tau + F0[t] W
        = sum_s K[t,s] x_s (x) y_s + A[t] S + F0[t] W,   K = F E (-r),  A = F E0
    a read h W_t = sum_s K[t,s] (h . x_s) y_s + A[t] h S + F0[t] h W: an (n, n) matrix times
    Y, so the memory costs B x d x h per weight, not B x n x d x h.
With forgetting toward W_0 the same holds for W - W_0. Under memory_gates chunk the gate
products are those of one gate per chunk (`chunk_gate_products`); the rest is unchanged.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def chunk_cuts(T: int, pos: int, chunk: int) -> list[int]:
    """The segment boundaries of a call of T tokens on a chunk grid that runs along the
    stream, `pos` tokens into the current chunk: the rest of that chunk, then whole chunks
    (the last one possibly cut short by the call's end)."""
    cuts = [0]
    while cuts[-1] < T:
        cuts.append(min(T, cuts[-1] + chunk - (pos + cuts[-1]) % chunk))
    return cuts


def decay(rate: torch.Tensor):
    """For per-token factors r (B, n): P[t, s] = prod_{s<u<=t} r_u (lower triangle) and
    P0[t] = prod_{u<=t} r_u, through cumulative log sums."""
    logs = torch.log(rate.clamp(min=1e-30)).cumsum(-1)
    n = rate.shape[-1]
    lower = torch.ones(n, n, dtype=torch.bool, device=rate.device).tril()
    diff = logs.unsqueeze(-1) - logs.unsqueeze(-2)
    return torch.exp(diff.masked_fill(~lower, float("-inf"))), torch.exp(logs)


def eager_under_autocast(fn):
    """`fn`, compiled with the rest of a `torch.compile`d forward in full precision, run eagerly
    under autocast: compiled with bf16 autocast, the memory's backward gave NaN at the second
    step of a titans trial (eager bf16 and compiled fp32 trained normally)."""
    eager = torch.compiler.disable(fn)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        if torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda"):
            return eager(*args, **kwargs)
        return fn(*args, **kwargs)

    return run


@eager_under_autocast
def segment_gates(
    cuts: list[int], eta: torch.Tensor, alpha: torch.Tensor, whole: bool, per_chunk: bool
):
    """What the closed form (`reads`) needs of the gates alone (they do not depend on
    the memory), per segment [cuts[i], cuts[i+1]): P = F E, A = F E0 and F0, for groups
    of equally long consecutive segments stacked as (B, segments, ...) (one group for a
    call on the chunk grid); and per segment, what its last W and S need (`ends`): the
    last rows of P and E, and A, F0, E0 at its last token. `whole`: the first segment
    starts a chunk (every later one does); `per_chunk`: memory_gates chunk."""
    spans = list(zip(cuts, cuts[1:]))
    B, groups, i = eta.shape[0], [], 0
    while i < len(spans):
        j, n = i + 1, spans[i][1] - spans[i][0]
        while j < len(spans) and spans[j][1] - spans[j][0] == n:
            j += 1
        t0, t1 = spans[i][0], spans[j - 1][1]
        shape = (B, j - i, n)
        e, a = eta[:, t0:t1].reshape(shape), alpha[:, t0:t1].reshape(shape)
        if per_chunk:
            starts = torch.tensor([k > 0 or whole for k in range(i, j)], device=e.device)
            both = chunk_gate_products(e, a, starts)
        else:
            both = gate_products(e, a)
        groups.append((i, j, both))
        i = j
    ends = []
    for _, _, (P, A, F0, E0, E_last) in groups:
        # of each token's x_s (x) y_s, times its rate, in the last W and the last S: negated,
        # as a write is -r_s x_s (x) y_s, and paired, as `ends` reads both in one product
        pair = -torch.stack([P[..., -1, :], E_last], dim=-1)  # (B, segments, n, 2)
        lasts = torch.stack([A[..., -1], F0[..., -1], E0[..., -1]], dim=-1)[..., None, None]
        ends += list(zip(pair.unbind(1), (tuple(x.unbind(1)) for x in lasts.unbind(1))))
    return [(i, j, both[:3]) for i, j, both in groups], ends


def merge_groups(groups: list) -> list:
    """Groups of `segment_gates` from consecutive calls, their indices already offset to
    one list of segments, with adjacent groups of equally long segments joined, so that
    `reads` batches them: what a MAC call, which computes its gates segment by segment,
    reads in one pass."""
    out = []
    for i, j, g in groups:
        if out and out[-1][1] == i and out[-1][2][0].shape[-1] == g[0].shape[-1]:
            _, _, h = out[-1]
            out[-1] = (out[-1][0], j, tuple(torch.cat([a, c], 1) for a, c in zip(h, g)))
        else:
            out.append((i, j, g))
    return out


def chunk_gate_products(eta: torch.Tensor, alpha: torch.Tensor, starts: torch.Tensor):
    """`gate_products` under memory_gates chunk, for segments (B, c, n) of which
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


def gate_products(eta: torch.Tensor, alpha: torch.Tensor):
    """P = F E, A = F E0, F0, E0 and the last row of E, from the per-token gates."""
    D, D0 = decay(torch.stack([eta, 1 - alpha]))  # both gates' decays in one pass
    (E, F_), (E0, F0) = D, D0
    n = eta.shape[-1]
    PA = F_ @ torch.cat([E, E0.unsqueeze(-1)], dim=-1)
    return PA[..., :n], PA[..., n], F0, E0, E[..., -1, :]


@eager_under_autocast
def ends(ws, ss, fs, rate, gates, i: int, anchors):
    """The W and S after segment i (from its start `ws`, `ss`, factors and rates). Both
    are X^T (c_s y_s) plus the carried W, S: one product of X^T with the two coefficient
    columns side by side (at the memory's sizes the number of kernels, not their work,
    sets the time)."""
    pair, (A, F0, E0) = gates[1][i]
    coef = (pair * rate.unsqueeze(-1)).unsqueeze(-1)  # (B, n, 2, 1)
    new_ws, new_ss = [], []
    for (X, Y), w, s, w0 in zip(fs, ws, ss, anchors):
        B, n, c = Y.shape
        Z = torch.bmm(X.transpose(1, 2), (coef * Y.unsqueeze(-2)).view(B, n, 2 * c))
        to_w, to_s = Z.view(B, -1, 2, c).unbind(2)  # unbind: one node backward, not two
        last_w = to_w + A * s + F0 * w
        if w0 is not None:
            last_w = last_w + (1 - F0) * w0
        new_ws.append(last_w)
        new_ss.append(to_s + E0 * s)
    return new_ws, new_ss


@eager_under_autocast
def reads(segs, q: torch.Tensor, cuts: list[int], gates, anchors) -> torch.Tensor:
    """Every read-out y_t = M_{W_t}(q_t), one batch per group of equally long segments:
    `segs` holds each segment's factors, rates and start W, S; `anchors` what forgetting
    decays each weight toward (None: zero)."""
    B, out = q.shape[0], []
    for i, j, (P, A, F0) in gates[0]:
        part = segs[i:j]
        c, n = j - i, (cuts[j] - cuts[i]) // (j - i)
        R = B * c  # a segment of a row is a row of the products, which are 3-D (`bmm`)
        K = (P * -torch.stack([r for _, r, _, _ in part], dim=1).unsqueeze(2)).view(R, n, -1)
        A_, F0_ = A.reshape(R, n, 1), F0.reshape(R, n, 1)
        h = q[:, cuts[i] : cuts[j]].reshape(R, n, -1)
        for m, w0 in enumerate(anchors):
            X, Y, w, s = (torch.stack(t, dim=1).flatten(0, 1) for t in zip(*(
                (*fs[m], ws[m], ss[m]) for fs, _, ws, ss in part)))  # fmt: skip
            z = torch.bmm(torch.bmm(h, X.transpose(1, 2)) * K, Y) + A_ * torch.bmm(h, s)
            z = z + F0_ * torch.bmm(h, w)
            if w0 is not None:  # W_0 (r, c), or per row (rows, r, c) with heads
                h0 = h @ w0 if w0.dim() == 2 else torch.bmm(h.view(B, c * n, -1), w0)
                z = z + (1 - F0_) * h0.view(R, n, -1)
            h = F.silu(z) if m + 1 < len(anchors) else z
        out.append(h.view(B, c * n, -1))
    return torch.cat(out, dim=1) if len(out) > 1 else out[0]
