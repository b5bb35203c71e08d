"""A plain PyTorch language model as an nlsweep plugin: a config dataclass and a module
whose forward maps token ids (B, T) to logits (B, T, V), and nothing else.

Notation
    x_t    token at position t;  e_t = E[x_t] + P[t]   (token and position embeddings)
    h_t    = e_t + MLP(LN(e_t)) summed causally: h_t = mean_{s<=t} of that, (B, T, d)
    logits = W LN(h_t)
Update frequency: one level (`fast`), every step, as nlsweep gives every plain model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from models import register_model


@dataclass
class TinyLMConfig:
    kind: Literal["tiny_lm"] = "tiny_lm"
    d_model: int = 32
    max_len: int = 256


@register_model("tiny_lm", TinyLMConfig)
class TinyLM(nn.Module):
    def __init__(self, cfg: TinyLMConfig, vocab_size: int):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.max_len, cfg.d_model)
        self.mlp = nn.Sequential(nn.LayerNorm(cfg.d_model), nn.Linear(cfg.d_model, cfg.d_model),
                                 nn.GELU())  # fmt: skip
        self.out = nn.Sequential(nn.LayerNorm(cfg.d_model), nn.Linear(cfg.d_model, vocab_size))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = torch.arange(ids.shape[1], device=ids.device)
        e = self.tok(ids) + self.pos(t)
        u = e + self.mlp(e)
        h = u.cumsum(1) / (t + 1).unsqueeze(-1)  # causal: position t sees 0..t only
        return self.out(h)
