"""The model kinds a trial config names in `model.kind`: kind -> (config dataclass, module).

This is where model kinds are registered; the harness looks a kind up here and nowhere else.
"""

from __future__ import annotations

from models.hope import Hope, HopeAttention, HopeAttentionConfig, HopeConfig
from models.nested_lstm import NestedLSTM, NestedLSTMConfig
from models.titans import Titans, TitansConfig
from models.transformer import Transformer, TransformerConfig

MODEL_KINDS = {
    "nested_lstm": (NestedLSTMConfig, NestedLSTM),
    "transformer": (TransformerConfig, Transformer),
    "titans": (TitansConfig, Titans),
    "hope_attention": (HopeAttentionConfig, HopeAttention),
    "hope": (HopeConfig, Hope),
}

__all__ = ["MODEL_KINDS"]
