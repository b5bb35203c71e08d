"""PyTorch models and optimizers for Nested Learning ablations.

`MODEL_KINDS` maps the `model.kind` of a trial config to its config dataclass and module.
This package never imports ray, mlflow or yaml.
"""

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

__all__ = ["MODEL_KINDS", "Hope", "HopeAttention", "NestedLSTM", "Titans", "Transformer"]
