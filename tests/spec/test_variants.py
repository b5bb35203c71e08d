"""Named variants: bundles of overrides swept as one factor (e.g. the four state configurations)."""

import pytest

from nlsweep.cli import train_main
from nlsweep.spec import SpecError, load_spec
from tests.helpers import GOOD_SPEC, NO_GPU

VARIANTS = GOOD_SPEC.replace(
    "  cms.periods.medium: {grid: [1, 2]}\n", "  variant: {grid: [reset, persistent, long]}\n"
) + (
    "variants:\n"
    "  reset: {}\n"
    "  persistent: {state.mode: persistent}\n"
    "  long: {state.mode: persistent, data.seq_len: 32, surprise.weights.fast: 0.05}\n"
)


def test_variants_build_trial_configs(write_spec):
    spec = load_spec(write_spec(VARIANTS), available=NO_GPU)
    assert spec.plan.trials == 6
    assert spec.baseline == {"variant": "reset"}
    reset = spec.trial_config({"variant": "reset", "train.seed": 1})
    long = spec.trial_config({"variant": "long", "train.seed": 0})
    assert (reset.state.mode, reset.data.seq_len, reset.train.seed) == ("reset", 16, 1)
    assert (long.state.mode, long.data.seq_len) == ("persistent", 32)
    assert long.surprise.weights == {"fast": 0.05}


@pytest.mark.parametrize(
    "text,line,key,fragment",
    [
        (VARIANTS.replace("long: {state.mode: persistent,", "long: {state.mode: forever,"),
         20, "variants.long", "state.mode: expected one of"),
        (VARIANTS.replace("[reset, persistent, long]", "[reset, persistant]"), 12,
         "space.variant", "names defined under variants"),
        (VARIANTS.replace("variants:\n", "other:\n"), 17, "other", "unknown key"),
        (VARIANTS.replace("  train.seed: {grid: [0, 1]}\n",
                          "  train.seed: {grid: [0, 1]}\n  data.seq_len: {grid: [8, 16]}\n"),
         14, "space.data.seq_len", "not also set by a variant (data.seq_len)"),
        (GOOD_SPEC.replace("  cms.periods.medium: {grid: [1, 2]}\n", "  variant: {grid: [a]}\n"),
         12, "space.variant", "a `variants:` section"),
    ],
)  # fmt: skip
def test_bad_variants(write_spec, text, line, key, fragment):
    with pytest.raises(SpecError) as e:
        load_spec(write_spec(text), available=NO_GPU)
    assert (e.value.line, e.value.key) == (line, key), str(e.value)
    assert fragment in e.value.expected


KINDS = """\
name: kinds
metric: val/bpc
mode: min
base:
  model: {kind: transformer, d_model: 16, n_layers: 1, n_heads: 2, d_ff: 32}
  optim: {kind: adam, lr: 3.0e-3}
  data: {corpus: pydoc, seq_len: 16, batch_size: 4}
  train: {steps: 4, eval_every: 4, eval_batches: 2, seed: 0, final_eval: sampled}
variants:
  transformer: {}
  titans: {model.kind: titans, model.memory_chunk: 4}
  hope_attention: {model.kind: hope_attention, cms.token_periods: [4]}
space:
  variant: {grid: [transformer, titans, hope_attention]}
search: {algorithm: grid}
"""


def test_train_runs_a_variant_whose_overrides_would_break_the_others(write_spec, capsys):
    """The old re-run line set titans' overrides on the base, and the spec then refused
    hope_attention's variant (memory_chunk unknown to it): exit 2 instead of a run."""
    path = write_spec(KINDS)
    old = ["--set", "base.model.kind=titans", "--set", "base.model.memory_chunk=4"]
    assert train_main([str(path), *old]) == 2
    assert "variants.hope_attention" in capsys.readouterr().err
    assert train_main([str(path), "--variant", "titans", "--set", "base.train.seed=1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("kinds: titans,") and "step 4" in out
    assert train_main([str(path), "--variant", "titan"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("--variant: one of transformer, titans, hope_attention, got 'titan'")


def test_an_unknown_variant_is_never_the_base_in_its_place():
    from nlsweep.spec.variants import apply_point

    variants = {"a": {"optim.lr": 1.0}}
    assert apply_point({"optim": {"lr": 2.0}}, variants, {"variant": "a"})["optim"]["lr"] == 1.0
    with pytest.raises(ValueError, match="variant 'b': one of a"):
        apply_point({"optim": {"lr": 2.0}}, variants, {"variant": "b"})
