"""Transformer: the baseline of the HOPE/Titans comparisons (pre-norm, causal SDPA attention).

Notation
    h_0        = E[x] (+ P[pos] with learned positions; rotary positions act inside attention)
    h'_i       = h_{i-1} + Attn_i(LN(h_{i-1}))           i = 1 .. n_layers
    h_i        = h'_i + MLP_i(LN(h'_i))
    logits     = W_head LN(h_L)
Update frequency: every parameter is an outer parameter on the single level "fast" (stepped
every outer step); the model keeps no state between batches. `window` > 0 limits attention to
the last `window` positions (the short-window baseline of the recall tests).
`tie_embeddings`: W_head = E (one matrix, so one parameter of the level). `init: gpt2` draws
E, P, W_qkv, W_1 and W_head from N(0, 0.02^2) and the residual projections W_out and W_2 from
N(0, 0.02^2 / (2 n_layers)) (GPT-2's scaling, so the residual stream's variance does not grow
with depth), with zero biases; `init: torch` keeps PyTorch's module defaults (uniform
+-1/sqrt(fan_in) for linear layers, N(0, 1) for embeddings). Either way LayerNorms start at
gain 1, bias 0, and modules a subclass adds (Titans memory, the HOPE chain) keep their own.

`AttentionConfig` holds the width/depth fields every attention model shares, so `transformer`,
`titans`, `hope_attention` and `hope` compare like for like.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from models.blocks import MLP, Attention, Embedding, check_widths
from models.common import require


@dataclass
class AttentionConfig:
    """Width and depth shared by every attention model kind."""

    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 128
    """Hidden width of each block's MLP."""
    positions: Literal["learned", "rotary"] = "rotary"
    max_len: int = 1024
    """Longest sequence with learned positions."""
    window: int = 0
    """Attention window in positions (0: full causal attention)."""
    dropout: float = 0.0
    tie_embeddings: bool = False
    """Share one matrix between the token embedding and the output head."""
    init: Literal["torch", "gpt2"] = "torch"
    """Initialisation of the embedding, attention, MLP and head weights (see the notation)."""

    def __post_init__(self):
        check_widths(self.d_model, self.n_heads, self.n_layers, self.d_ff)
        require(self.max_len >= 1, "max_len", f"a positive integer, got {self.max_len}")
        require(self.window >= 0, "window", f"0 (off) or a positive integer, got {self.window}")
        require(0.0 <= self.dropout < 1.0, "dropout", f"a value in [0, 1), got {self.dropout}")


@dataclass
class TransformerConfig(AttentionConfig):
    """`model:` section for `kind: transformer`."""

    kind: Literal["transformer"] = "transformer"


class Block(nn.Module):
    def __init__(self, cfg: AttentionConfig):
        super().__init__()
        d = cfg.d_model
        self.norm_attn = nn.LayerNorm(d)
        self.attn = Attention(d, cfg.n_heads, cfg.positions == "rotary", cfg.window, cfg.dropout)
        self.norm_mlp = nn.LayerNorm(d)
        self.mlp = MLP(d, cfg.d_ff, cfg.dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.norm_attn(h))
        return h + self.mlp(self.norm_mlp(h))


class AttentionLM(nn.Module):
    """Embedding -> blocks -> head; subclasses choose the blocks and the state they carry."""

    levels = ("fast",)
    state_names: tuple[str, ...] = ()
    carries_state = False

    def __init__(self, cfg: AttentionConfig, vocab_size: int, blocks: list[nn.Module]):
        super().__init__()
        self.cfg = cfg
        self.embed = Embedding(vocab_size, cfg.d_model, cfg.positions, cfg.max_len)
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, vocab_size)
        if cfg.init == "gpt2":
            self._gpt2_init()
        if cfg.tie_embeddings:
            self.head.weight = self.embed.tok.weight

    def _gpt2_init(self) -> None:
        std, residual = 0.02, 0.02 / (2 * self.cfg.n_layers) ** 0.5
        for m in self.modules():
            if isinstance(m, Attention):
                nn.init.normal_(m.qkv.weight, std=std)
                nn.init.normal_(m.out.weight, std=residual)
            elif isinstance(m, MLP):
                nn.init.normal_(m.w1.weight, std=std)
                nn.init.normal_(m.w2.weight, std=residual)
                nn.init.zeros_(m.w1.bias)
                nn.init.zeros_(m.w2.bias)
            elif isinstance(m, Embedding):
                for table in (m.tok, m.pos):
                    if table is not None:
                        nn.init.normal_(table.weight, std=std)
        nn.init.normal_(self.head.weight, std=std)
        nn.init.zeros_(self.head.bias)

    def level_modules(self) -> dict[str, list[nn.Module]]:
        return {"fast": [self]}

    def level_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {"fast": list(self.parameters())}

    def body(self, idx: torch.Tensor, state=None):
        """The blocks' output (B, T, d) and the state they carry after the batch."""
        h = self.embed(idx)
        for block in self.blocks:
            h = block(h)
        return h, ()

    def hidden(self, idx: torch.Tensor, state=None):
        """The head's input h (B, T, d) and the state after the batch (None: stateless)."""
        h, new_state = self.body(idx, state)
        return self.norm_out(h), new_state or None

    def forward(self, idx: torch.Tensor, state=None):
        h, new_state = self.hidden(idx, state)
        return self.head(h), new_state


class Transformer(AttentionLM):
    def __init__(self, cfg: TransformerConfig, vocab_size: int):
        super().__init__(cfg, vocab_size, [Block(cfg) for _ in range(cfg.n_layers)])
