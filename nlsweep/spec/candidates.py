"""The trial configs a spec's space can produce, as far as checks before a sweep need them:
the base config and the corners of the space (every combination of the values a grid or
choice lists and both ends of each range); and the corpora they read, probed.
"""

from __future__ import annotations

import itertools

from nlsweep.config.space import candidate_values
from nlsweep.config.specfile import SpecError
from nlsweep.data.corpora import DataError
from nlsweep.data.registry import corpus_entry
from nlsweep.spec.loader import Spec

MAX_POINTS = 512
"""Points of the space whose data settings are checked (every combination of the values a
grid or choice lists and both ends of each range, up to this many)."""


def candidate_configs(spec: Spec) -> list:
    """The base config and the trial configs at the space's candidate points."""
    axes = {p: candidate_values(d) for p, d in spec.space.items()}
    points = itertools.islice(itertools.product(*axes.values()), MAX_POINTS)
    return [spec.base] + [spec.trial_config(dict(zip(axes, combo))) for combo in points]


def probe_corpora(spec: Spec) -> None:
    """Each distinct corpus the trials read passes its registered `probe` (its files exist
    and are readable, without tokenizing): `nlsweep validate`, and the first data check."""
    seen = set()
    for cfg in candidate_configs(spec):
        for part in cfg.data.phase_configs() or [cfg.data]:
            kind = corpus_entry(part.corpus)
            key = (part.corpus, part.path, part.text_field, part.separator, repr(part.options))
            if kind.probe is None or key in seen:
                continue
            seen.add(key)
            try:
                kind.probe(part)
            except DataError as e:
                raise SpecError.at(spec, "base.data", str(e)) from None
