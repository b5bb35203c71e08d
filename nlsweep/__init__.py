"""nlsweep: rigorous, resumable ablation sweeps for Nested Learning mechanisms.

The packages, bottom to top (each imports only those below it; `pyproject.toml`'s import
contracts check it): `config` (reading a spec), `data`, `training` (one trial, no Ray),
`tracking` (every MLflow call), `spec` (a sweep's whole description), `report` (from MLflow
alone, no torch or Ray), `execution` (every Ray call), then `api` and `cli`.

The Python API (`docs/api.md`) is named here and loaded on first use, so that importing a
torch-free package such as `nlsweep.report` does not load torch through this file:

    load_spec, run_sweep, load_trials, write_report, evaluate_sweep, Trainer, TrialConfig,
    SweepResult,
    and for plugins register_model, register_optimizer, register_corpus,
    register_evaluator (with the EvalContext an evaluator gets) and the contract kit
    check_kind
"""

__version__ = "0.1.0"

__all__ = [
    "EvalContext", "SpecError", "SweepResult", "Trainer", "TrialConfig", "check_kind",
    "evaluate_sweep", "load_spec", "load_trials", "register_corpus", "register_evaluator",
    "register_model", "register_optimizer", "run_sweep", "write_report",
]  # fmt: skip

_HOMES = {
    "SpecError": "nlsweep.config.specfile",
    "SweepResult": "nlsweep.api",
    "load_spec": "nlsweep.api",
    "load_trials": "nlsweep.api",
    "run_sweep": "nlsweep.api",
    "write_report": "nlsweep.api",
    "evaluate_sweep": "nlsweep.api",
    "Trainer": "nlsweep.training.trainer",
    "TrialConfig": "nlsweep.training.trial",
    "register_model": "models.registry",
    "register_optimizer": "models.optim",
    "register_corpus": "nlsweep.data.registry",
    "register_evaluator": "nlsweep.training.evaluators",
    "EvalContext": "nlsweep.training.evaluators",
    "check_kind": "nlsweep.testing",
}


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'nlsweep' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *__all__])
