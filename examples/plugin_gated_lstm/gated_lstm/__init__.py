"""Gated nested LSTM: the nested LSTM whose slow level's update is scaled by a learned gate.

Notation (as models/nested_lstm.py; one change at the slow level)
    y2_t      output of the medium level, (B, T, d)
    g         learned gate logits, (d,), one per channel           level "slow"
    y3_t      = y2_t + sigmoid(g) * FFN_s(norm(y2_t))               level "slow"
Update frequencies: unchanged; g belongs to the slow level and steps with it (period C_slow).
At g = gate_init = +inf the model is the nested LSTM; at gate_init = 0 the slow level starts
at half strength.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from models import ConfigError, register_model
from models.nested_lstm import NestedLSTM, NestedLSTMConfig


@dataclass
class GatedLSTMConfig(NestedLSTMConfig):
    """`model:` section for `kind: gated_lstm`."""

    kind: Literal["gated_lstm"] = "gated_lstm"
    gate_init: float = 0.0
    """Initial gate logit of every channel (sigmoid(0) = 0.5)."""

    def __post_init__(self):
        super().__post_init__()
        if not -20.0 <= self.gate_init <= 20.0:
            raise ConfigError("gate_init", f"a logit in [-20, 20], got {self.gate_init}")


class Gate(nn.Module):
    def __init__(self, d: int, init: float):
        super().__init__()
        self.logit = nn.Parameter(torch.full((d,), float(init)))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logit) * u


@register_model("gated_lstm", GatedLSTMConfig)
class GatedLSTM(NestedLSTM):
    def __init__(self, cfg: GatedLSTMConfig, vocab_size: int):
        super().__init__(cfg, vocab_size)
        self.gate = Gate(cfg.d_model, cfg.gate_init)

    def level_modules(self) -> dict[str, list[nn.Module]]:
        levels = super().level_modules()
        levels["slow"] = [*levels["slow"], self.gate]
        return levels

    def forward_levels(self, idx: torch.Tensor, state=None):
        if state is None:
            state = self.init_state(idx.shape[0], idx.device)
        y1, new_state = self.lstm(self.embed(idx), state)
        y = self.drop(y1)
        y2 = (
            y + self.ffn_medium(self.norm_medium(y))
            if self.cfg.residual
            else self.ffn_medium(self.norm_medium(y))
        )
        y3 = y2 + self.gate(self.ffn_slow(self.norm_slow(y2)))
        outputs = {"fast": y1, "medium": y2, "slow": y3}
        return self.head(self.norm_out(y3)), new_state, outputs
