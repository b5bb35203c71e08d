"""A sweep's whole description: the spec file read and validated into a `Spec` (the base
`TrialConfig`, the search space and its plan, variants, search and scheduler, resources,
tracking and storage), and the trial config of any point of its space."""

from nlsweep.config.specfile import SpecError
from nlsweep.spec.candidates import candidate_configs, check_eval, probe_corpora
from nlsweep.spec.loader import Spec, describe, load_spec, swept_values
from nlsweep.spec.variants import NAME_RE, VARIANT, apply_point

__all__ = [
    "NAME_RE", "VARIANT", "Spec", "SpecError", "apply_point", "candidate_configs", "check_eval",
    "describe",
    "load_spec", "probe_corpora", "swept_values",
]  # fmt: skip
