"""PyTorch models and optimizers for Nested Learning ablations.

The model kinds a trial can name are registered in `models.kinds` (`MODEL_KINDS`). This
package never imports ray, mlflow, yaml or nlsweep, and importing it (or `models.errors`)
loads no torch: the harness's torch-free layers share `ConfigError` from here.
"""

from models.errors import ConfigError, require

__all__ = ["ConfigError", "require"]
