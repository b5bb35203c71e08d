"""The config error of the model package, importable without torch.

`models/` never imports yaml, ray or mlflow: configs here are plain dataclasses that check
their own values in `__post_init__` and raise `ConfigError(key, expected)`; the harness adds
the spec file, the line and the dotted path in front of the key. This module imports nothing,
so the harness's torch-free layers (spec reading, tracking, reports) share the one error type.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value is outside what its owner accepts."""

    def __init__(self, key: str, expected: str):
        super().__init__(f"{key}: {expected}")
        self.key = key
        self.expected = expected

    def __reduce__(self):
        # Ray pickles a trial's exception to the driver; keep the two-argument form intact.
        return (ConfigError, (self.key, self.expected))


def require(cond: bool, key: str, expected: str) -> None:
    if not cond:
        raise ConfigError(key, expected)
