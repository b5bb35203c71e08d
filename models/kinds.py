"""The built-in model kinds, registered through `models.registry.register_model`, the same
path a plugin takes. Importing this module registers them."""

from __future__ import annotations

from models.hope import Hope, HopeAttention, HopeAttentionConfig, HopeConfig
from models.nested_lstm import NestedLSTM, NestedLSTMConfig
from models.registry import register_model
from models.selfmod import HopeSelfMod, HopeSelfModConfig
from models.titans import Titans, TitansConfig
from models.transformer import Transformer, TransformerConfig

BUILTIN = {
    "nested_lstm": (NestedLSTMConfig, NestedLSTM),
    "transformer": (TransformerConfig, Transformer),
    "titans": (TitansConfig, Titans),
    "hope_attention": (HopeAttentionConfig, HopeAttention),
    "hope": (HopeConfig, Hope),
    "hope_selfmod": (HopeSelfModConfig, HopeSelfMod),
}
for _kind, (_config, _model) in BUILTIN.items():
    register_model(_kind, _config, _model)

__all__ = ["BUILTIN"]
