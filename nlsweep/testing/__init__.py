"""A contract test kit for model kinds: run it on your own registered kind (a plugin's test,
or a notebook) to learn whether nlsweep can sweep it faithfully.

    from nlsweep.testing import check_kind
    assert check_kind("gated_lstm", {"d_model": 16}) == {}   # {check: what failed}

Each check builds tiny trials of the kind on the bundled pydoc corpus, on CPU:

- `ownership`: every parameter is owned by exactly one optimizer group (CMS level);
- `exact_resume`: checkpoint -> restore into a fresh trainer -> continue ends bit-identical
  to the run that never stopped (weights and every non-timing metric);
- `rows_independent`: a row's logits depend on that row's tokens only;
- `state_split` (kinds that carry state): any split of a stream, state carried, equals one
  pass over it;
- `cms_periods` (kinds with several levels): level l's parameters change only at steps that
  are multiples of its period C_l, and at every such step.

nlsweep's own test suite runs the kit over every registered kind.
"""

from nlsweep.testing.kit import CHECKS, KindCheckError, check_kind, trial_for

__all__ = ["CHECKS", "KindCheckError", "check_kind", "trial_for"]
