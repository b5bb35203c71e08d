"""PyTorch models and optimizers for Nested Learning ablations.

The model kinds a trial can name are registered in `models.registry` (the built-ins by
`models.kinds`, plugins the same way; the contract: `models.capabilities`). This
package never imports ray, mlflow, yaml or nlsweep, and importing it (or `models.errors`)
loads no torch: the harness's torch-free layers share `ConfigError` from here.
"""

from models.errors import ConfigError, require
from models.registry import ModelKind, RegistryError, model_kind, model_kinds, register_model

__all__ = [
    "ConfigError", "ModelKind", "RegistryError", "model_kind", "model_kinds", "register_model",
    "require",
]  # fmt: skip
