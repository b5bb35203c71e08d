"""Evaluators: the registry, objectives derived from their declarations (a plugin metric as a
sweep's objective, its direction as the mode), the example top-k evaluator against its
formula, and an evaluator that breaks its declaration stopping the trial in one line."""

import shutil

import pytest
import torch

from models.registry import RegistryError
from nlsweep.spec import SpecError, load_spec
from nlsweep.training import TrialConfig, objectives, register_evaluator
from nlsweep.training.evaluators import EvalContext, evaluator, evaluator_names
from tests.helpers import GOOD, NO_GPU, ROOT, spec_text

TOP_K = ROOT / "examples" / "plugin_metric" / "top_k.py"


def base(**train):
    raw = {k: dict(v) for k, v in GOOD["base"].items()}
    raw["train"].update(train)
    return raw


@pytest.fixture
def top_k(plugin_dir):
    shutil.copy(TOP_K, plugin_dir / "top_k.py")
    from nlsweep.config.plugins import load_plugin

    load_plugin("top_k.py", plugin_dir)
    return plugin_dir


def test_objectives_follow_the_corpus_and_the_evaluators(top_k):
    text = objectives(TrialConfig.from_dict(base()))
    assert text == dict.fromkeys(["val/bpc", "val/bpb", "val/loss", "val/ppl", "train/loss"], "min")
    raw = base()
    raw["data"] = {"corpus": "passkey", "seq_len": 16, "batch_size": 4, "eval_lengths": [32]}
    task = objectives(TrialConfig.from_dict(raw))
    assert "val/bpb" not in task
    assert task["val/passkey_acc"] == task["val/passkey_acc/len32"] == "max"
    with_k = objectives(TrialConfig.from_dict(base(evaluators={"top_k": {"k": 3}})))
    assert with_k["val/top3_acc"] == "max"
    assert evaluator("heldout").always and "heldout" not in evaluator_names()


def test_a_plugin_metric_is_an_objective_with_its_direction(top_k):
    spec = top_k / "spec.yaml"
    plug = {"plugins": ["top_k.py"], "metric": "val/top5_acc"}
    spec.write_text(spec_text({**plug, "base/train/evaluators": ["top_k"]}, drop=("mode",)))
    assert load_spec(spec, available=NO_GPU).mode == "max"  # declared, so the default
    spec.write_text(spec_text({**plug, "base/train/evaluators": ["top_k"]}))  # mode: min
    with pytest.raises(SpecError, match=r":4: mode: max for val/top5_acc \(its evaluator "
                       r"declares higher is better\), got 'min'"):  # fmt: skip
        load_spec(spec, available=NO_GPU)
    spec.write_text(spec_text({**plug, "mode": "max"}))  # the evaluator is not named
    with pytest.raises(SpecError) as e:
        load_spec(spec, available=NO_GPU)
    assert e.value.key == "metric" and "got 'val/top5_acc'" in e.value.expected
    assert "val/top5_acc is reported by evaluator top_k (train.evaluators)" in e.value.expected


@pytest.mark.parametrize(
    ("evaluators", "key", "expected"),
    [
        (["nope"], "train.evaluators", "one of top_k, got 'nope'"),
        ({"top_k": {"k": 0}}, "train.evaluators.top_k.k", "in [1, 1000], got 0"),
        ({"top_k": {"kk": 2}}, "train.evaluators.top_k.kk", "unknown key; expected one of k"),
        (["heldout"], "train.evaluators", "not heldout: it runs at every evaluation"),
    ],
)
def test_bad_evaluators_name_their_key(top_k, evaluators, key, expected):
    spec = top_k / "spec.yaml"
    spec.write_text(spec_text({"plugins": ["top_k.py"], "base/train/evaluators": evaluators}))
    with pytest.raises(SpecError) as e:
        load_spec(spec, available=NO_GPU)
    assert e.value.key == f"base.{key}" and expected in e.value.expected, str(e.value)


def test_top_k_is_its_formula_and_leaves_the_training_state_alone(top_k):
    """k = 1 is the held-out argmax accuracy, k = V is 1; the weights, the data cursor and
    the training state are the same after an evaluation as before."""
    from nlsweep.training import Trainer

    cfg = TrialConfig.from_dict(base(steps=4, eval_every=4, evaluators={"top_k": {"k": 1}}))
    t = Trainer(cfg)
    for _ in range(4):
        t.train_step()
    weights = {k: v.clone() for k, v in t.model.state_dict().items()}
    cursor, state = t.batcher.state_dict(), t.state
    m = t._metrics()
    assert all(torch.equal(weights[k], v) for k, v in t.model.state_dict().items())
    assert t.batcher.state_dict() == cursor and t.state is state
    t.evaluate(t.final_windows())
    assert m["val/top1_acc"] == pytest.approx(t.accuracy)
    ev = evaluator("top_k")
    every = ev.evaluate(EvalContext(t, True, ev.options(k=len(t.corpus.vocab))))
    assert every == {f"val/top{len(t.corpus.vocab)}_acc": 1.0}


BROKEN = """
from nlsweep import register_evaluator


@register_evaluator("silent", metrics={"val/silent": "max"})
def silent(ctx):
    return {}


@register_evaluator("clash", metrics={"val/clash": "min"})
def clash(ctx):
    return {"val/clash": 0.0, "val/loss": 0.0}


@register_evaluator("texty", metrics={"val/texty": "min"})
def texty(ctx):
    return {"val/texty": "low"}
"""


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("silent", "did not report val/silent, which it declares"),
        ("clash", "reports val/loss, already reported in this evaluation"),
        ("texty", "val/texty is str, expected a number"),
    ],
)
def test_an_evaluator_that_breaks_its_declaration_stops_the_trial(plugin_dir, name, said):
    from nlsweep.config.plugins import load_plugin
    from nlsweep.training import Trainer

    (plugin_dir / "broken_eval.py").write_text(BROKEN)
    load_plugin("broken_eval.py", plugin_dir)
    t = Trainer(TrialConfig.from_dict(base(steps=2, eval_every=2, evaluators=[name])))
    with pytest.raises(RuntimeError) as e:
        list(t.run())
    assert str(e.value).startswith(f"evaluator {name} (") and said in str(e.value)
    assert "\n" not in str(e.value)


def test_registering_an_evaluator_twice_names_both(plugin_dir):
    def a(ctx):
        return {}

    def b(ctx):
        return {}

    register_evaluator("twice", a, metrics={})
    with pytest.raises(RegistryError, match=r"evaluator twice registered twice: by .*\.a .* by"):
        register_evaluator("twice", b, metrics={})
    with pytest.raises(RegistryError, match="is better at min or max, got 'up'"):
        register_evaluator("updown", a, metrics={"val/x": "up"})
