"""Parts shared by the attention models (`transformer`, `titans`, `hope`, `hope_attention`).

Notation
    x        (B, T, d) residual stream; H heads of width d_h = d / H
    Attn(x)  causal softmax attention through PyTorch SDPA; with `window` w > 0 position i
             attends to positions i-w+1 .. i only (a sliding window), else to 0 .. i
    Attn(x | p)  the same with extra keys and values (never queries) before x: persistent
             memory tokens, which have no position (under RoPE their scores use the
             unrotated query), and a MAC segment's retrieved memory, a token per position
             of x, rotated as x is (`models/titans.py`)
    RoPE     rotary positions: channel pairs of q and k rotated by angle pos * base^(-2j/d_h)
    MLP(x)   W_2 gelu(W_1 x),  W_1: d -> d_ff,  W_2: d_ff -> d
All parameters here are outer parameters: they change only when the outer optimizer steps.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from models.common import require

ROPE_BASE = 10000.0


def check_widths(d_model: int, n_heads: int, n_layers: int, d_ff: int) -> None:
    require(d_model >= 1, "d_model", f"a positive integer, got {d_model}")
    require(n_heads >= 1, "n_heads", f"a positive integer, got {n_heads}")
    require(
        d_model % n_heads == 0 and (d_model // n_heads) % 2 == 0,
        "n_heads",
        f"a divisor of d_model ({d_model}) leaving an even head width, got {n_heads}",
    )
    require(n_layers >= 1, "n_layers", f"a positive integer, got {n_layers}")
    require(d_ff >= 1, "d_ff", f"a positive integer, got {d_ff}")


def _rope_angles(T: int, d_h: int, offset: int, device, dtype):
    """cos and sin (T, d_h/2) of the angles pos * base^(-2j/d_h)."""
    inv = ROPE_BASE ** (-torch.arange(0, d_h, 2, device=device, dtype=torch.float32) / d_h)
    pos = torch.arange(offset, offset + T, device=device, dtype=torch.float32)
    ang = torch.outer(pos, inv)
    return ang.cos().to(dtype), ang.sin().to(dtype)


@functools.lru_cache(maxsize=64)
def _rope_tables(T: int, d_h: int, offset: int, device, dtype):
    """`_rope_angles`, built once per shape: a MAC call rotates every segment of every layer
    at the same positions. Never inference tensors, which autograd could not save later."""
    with torch.inference_mode(False):
        return _rope_angles(T, d_h, offset, device, dtype)


def rotate(x: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """RoPE on (..., T, d_h), positions offset .. offset+T-1."""
    tables = _rope_angles if torch.compiler.is_compiling() else _rope_tables  # traced as code
    cos, sin = tables(x.shape[-2], x.shape[-1], offset, x.device, x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2)


def window_mask(T: int, window: int, device) -> torch.Tensor:
    """Boolean (T, T) mask, True where query i may attend key j: i-window < j <= i."""
    i = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    return (j <= i) & (j > i - window)


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, rotary: bool, window: int, dropout: float):
        super().__init__()
        self.n_heads, self.rotary, self.window, self.dropout = n_heads, rotary, window, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor, persistent=None, aligned=None):
        """x (B, T, d) -> (B, T, d). Keys and values (never queries) may be added before x:
        `persistent` (1, P, d), learned tokens without a position, which every query sees,
        and `aligned` (B, T, d), one token per position of x (a MAC segment's retrieved
        memory), of which query t sees those at positions <= t (`context_mask`)."""
        if persistent is not None or aligned is not None:
            return self._with_context(x, persistent, aligned)
        B, T, d = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        if self.rotary:
            q, k = rotate(q), rotate(k)
        p = self.dropout if self.training else 0.0
        if self.window and self.window < T:
            mask = window_mask(T, self.window, x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        return self.out(y.transpose(1, 2).reshape(B, T, d))

    def _with_context(self, x, persistent, aligned) -> torch.Tensor:
        B, T, d = x.shape
        H, dh = self.n_heads, d // self.n_heads

        def heads(z: torch.Tensor):
            return self.qkv(z).view(z.shape[0], z.shape[1], 3, H, dh).permute(2, 0, 3, 1, 4)

        q_plain, k, v = heads(x)
        ks, vs = [k], [v]
        if aligned is not None:
            _, ka, va = heads(aligned)
            ks, vs = [ka, k], [va, v]
        q = q_plain
        if self.rotary:  # aligned tokens at their positions of x, the same as x's
            q, *ks = rotate(torch.stack([q, *ks])).unbind(0)
        P = 0 if persistent is None else persistent.shape[1]
        if persistent is not None:
            _, kp, vp = heads(persistent)
            kp, vp = kp.expand(B, -1, -1, -1), vp.expand(B, -1, -1, -1)
            if self.rotary:
                # Persistent tokens have no position: their scores take the unrotated query,
                # the others the rotated one. Stacking both along the head width (zeros where
                # a key has no part) gives each score its own query in one SDPA call.
                q = torch.cat([q_plain, q], dim=-1)
                kp = torch.cat([kp, torch.zeros_like(kp)], dim=-1)
                ks = [torch.cat([torch.zeros_like(t), t], dim=-1) for t in ks]
            ks, vs = [kp, *ks], [vp, *vs]
        visible = context_mask(T, P, aligned is not None, self.window, x.device)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(
            q, torch.cat(ks, 2), torch.cat(vs, 2), attn_mask=visible, dropout_p=p, scale=dh**-0.5
        )
        return self.out(y.transpose(1, 2).reshape(B, T, d))


def context_mask(T: int, P: int, aligned: bool, window: int, device) -> torch.Tensor:
    """(T, P [+ T] + T): which keys query t sees: every one of the P persistent tokens; of
    the aligned tokens, those at positions <= t (a MAC segment's retrieved memory r_u is read
    with u's query, so a later one would leak u's token); and x causally (or in the window)."""
    parts = [torch.ones(T, P, dtype=torch.bool, device=device)]
    if aligned:
        parts.append(window_mask(T, T, device))
    parts.append(window_mask(T, window if window and window < T else T, device))
    return torch.cat(parts, dim=1)


class MLP(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__()
        self.w1 = nn.Linear(d_model, d_ff)
        self.w2 = nn.Linear(d_ff, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.w2(F.gelu(self.w1(x))))


class Embedding(nn.Module):
    """Token embedding plus learned positions (unless the attention is rotary)."""

    def __init__(self, vocab: int, d_model: int, positions: str, max_len: int):
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.max_len = max_len
        self.pos = nn.Embedding(max_len, d_model) if positions == "learned" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tok(x)
        if self.pos is not None:
            T = x.shape[1]
            if self.max_len < T:
                raise ValueError(f"sequence of {T} tokens exceeds model.max_len {self.max_len}")
            h = h + self.pos(torch.arange(T, device=x.device))
        return h
