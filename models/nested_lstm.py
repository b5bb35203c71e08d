"""Nested LSTM: the three-level model of the LSTM/FFN continuum-memory reproduction.

Notation (Nested Learning, CMS with step periods; see shared notes §1)
    x_t            input token at position t;   e_t = E[x_t]                 level "fast"
    (h_t, c_t)     LSTM state; y1_t = LSTM(e_t; h_{t-1}, c_{t-1})            level "fast"
    y2_t           = y1_t + FFN_m(norm(y1_t))   (residual on; else FFN_m(y1)) level "medium"
    y3_t           = y2_t + FFN_s(norm(y2_t))                                 level "slow"
    logits_t       = W_head norm(y3_t)                                        level "fast"
    FFN(u)         = W_2 gelu(W_1 u),  W_1: d_model -> d_ff,  W_2: d_ff -> d_model

Update frequencies: level l changes only at outer steps i with i % C_l == 0, by one
optimizer step on the gradients accumulated since its previous change
(theta_l <- theta_l - sum_{t in chunk} eta_l g_l(t) for SGD; `models/cms.py` does this).
Typical periods are fast 1, medium 16, slow 256. The embedding, the output norm and the head
belong to the fast level, so every parameter has exactly one owner (notes, pitfall 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from models.common import require

LEVELS = ("fast", "medium", "slow")


@dataclass
class NestedLSTMConfig:
    """`model:` section for `kind: nested_lstm`."""

    kind: Literal["nested_lstm"] = "nested_lstm"
    d_model: int = 64
    """Embedding width and LSTM hidden size."""
    d_ff: int = 128
    """Hidden width of the medium and slow FFN blocks."""
    residual: bool = True
    """Add each FFN's output to its input (y + FFN(norm(y))) instead of replacing it."""
    norm: Literal["layernorm", "none"] = "layernorm"
    """Normalisation before each FFN and before the head."""
    dropout: float = 0.0
    """Dropout on the LSTM output and inside the FFNs (training only)."""

    def __post_init__(self):
        require(self.d_model >= 1, "d_model", f"a positive integer, got {self.d_model}")
        require(self.d_ff >= 1, "d_ff", f"a positive integer, got {self.d_ff}")
        require(0.0 <= self.dropout < 1.0, "dropout", f"a value in [0, 1), got {self.dropout}")


class FFN(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__()
        self.up = nn.Linear(d_model, d_ff)
        self.down = nn.Linear(d_ff, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.down(self.drop(torch.nn.functional.gelu(self.up(u))))


def _norm(kind: str, d: int) -> nn.Module:
    return nn.LayerNorm(d) if kind == "layernorm" else nn.Identity()


class NestedLSTM(nn.Module):
    levels = LEVELS
    state_names = ("h", "c")
    carries_state = True
    state_batch_dim = 1  # nn.LSTM state is (layers, B, d); other kinds keep rows first

    def __init__(self, cfg: NestedLSTMConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.embed = nn.Embedding(vocab_size, d)
        self.lstm = nn.LSTM(d, d, batch_first=True)
        self.drop = nn.Dropout(cfg.dropout)
        self.norm_medium = _norm(cfg.norm, d)
        self.ffn_medium = FFN(d, cfg.d_ff, cfg.dropout)
        self.norm_slow = _norm(cfg.norm, d)
        self.ffn_slow = FFN(d, cfg.d_ff, cfg.dropout)
        self.norm_out = _norm(cfg.norm, d)
        self.head = nn.Linear(d, vocab_size)

    def level_modules(self) -> dict[str, list[nn.Module]]:
        return {
            "fast": [self.embed, self.lstm, self.norm_out, self.head],
            "medium": [self.norm_medium, self.ffn_medium],
            "slow": [self.norm_slow, self.ffn_slow],
        }

    def level_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {
            level: [p for m in mods for p in m.parameters()]
            for level, mods in self.level_modules().items()
        }

    def init_state(self, batch_size: int, device: torch.device | str = "cpu"):
        z = torch.zeros(1, batch_size, self.cfg.d_model, device=device)
        return (z, z.clone())

    def forward(self, idx: torch.Tensor, state=None):
        """idx (B, T) token ids -> logits (B, T, V) and the LSTM state after position T."""
        logits, new_state, _ = self.forward_levels(idx, state)
        return logits, new_state

    def forward_levels(self, idx: torch.Tensor, state=None):
        """Like forward, plus each level's output y_l (B, T, d): what the surprise
        objective regresses onto its local error signal dL/dy_l."""
        if state is None:
            state = self.init_state(idx.shape[0], idx.device)
        y1, new_state = self.lstm(self.embed(idx), state)
        outputs = {"fast": y1}
        y = self.drop(y1)
        for level, norm, ffn in (
            ("medium", self.norm_medium, self.ffn_medium),
            ("slow", self.norm_slow, self.ffn_slow),
        ):
            out = ffn(norm(y))
            y = y + out if self.cfg.residual else out
            outputs[level] = y
        return self.head(self.norm_out(y)), new_state, outputs
