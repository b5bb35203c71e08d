"""Corpora from plugins: the registry, the example corpus (examples/plugin_corpus), its
options validated like a built-in section, and every bad case one line with nothing
started."""

import shutil
import textwrap

import pytest

from models import ConfigError
from models.registry import RegistryError
from nlsweep.cli import main
from nlsweep.data import DataConfig, corpus_entry, corpus_names, load_corpus, register_corpus
from nlsweep.data.corpora import load_texts
from nlsweep.spec import SpecError, load_spec
from tests.helpers import NO_GPU, ROOT, nothing_started, one_line, spec_text

ARITH = ROOT / "examples" / "plugin_corpus" / "arith.py"
DATA = {"corpus": "arith", "options": {"problems": 400, "max_operand": 30}, "seq_len": 16,
        "batch_size": 4}  # fmt: skip


def arith_spec(folder, data=None, **changes):
    shutil.copy(ARITH, folder / "arith.py")
    path = folder / "spec.yaml"
    path.write_text(spec_text({"plugins": ["arith.py"], "base/data": data or DATA, **changes}))
    return path


def test_the_built_ins_take_the_plugins_path():
    assert corpus_names()[:8] == [
        "pydoc", "tinyshakespeare", "wikitext2", "text", "tokens", "mqar", "passkey", "phases",
    ]  # fmt: skip
    for name in corpus_names()[:8]:
        assert "nlsweep/data/" in corpus_entry(name).source.replace("\\", "/")
    assert corpus_names(text_only=True)[:4] == ["pydoc", "tinyshakespeare", "wikitext2", "text"]


def test_a_plugin_corpus_trains_with_disjoint_splits_and_reports_bytes(plugin_dir):
    from nlsweep.training import Trainer

    spec = load_spec(arith_spec(plugin_dir), available=NO_GPU)
    d = spec.base.data
    assert d.options.problems == 400 and d.options.ops == "+-"  # typed, defaults filled
    train, val = load_texts(d)
    train_set, val_set = set(train.split()), set(val.split())
    assert len(train_set) + len(val_set) == 400 and not train_set & val_set
    corpus = load_corpus(d)
    assert len(corpus.vocab) == 15  # <unk>, the digits, + - = and the newline
    m = list(Trainer(spec.base).run())[-1]
    assert m["val/bpb"] == pytest.approx(m["val/bpc"])  # ASCII: a byte a character
    assert 0 <= m["data/val_overlap"] < 1


def test_options_are_part_of_the_trial_config(plugin_dir):
    """Swept like any field, flattened into the run's params, and back."""
    from nlsweep.config import flatten, to_dict

    spec = load_spec(
        arith_spec(plugin_dir, space={"data.options.max_operand": {"grid": [20, 30]}}),
        available=NO_GPU,
    )
    a, b = (spec.trial_config({"data.options.max_operand": v}) for v in (20, 30))
    assert (a.data.options.max_operand, b.data.options.max_operand) == (20, 30)
    assert load_texts(a.data) != load_texts(b.data)
    assert flatten(to_dict(a))["data.options.max_operand"] == 20


@pytest.mark.parametrize(
    ("options", "key", "expected"),
    [
        ({"problem": 10}, "base.data.options.problem", "unknown key; expected one of problems"),
        ({"problems": "many"}, "base.data.options.problems", "expected an integer"),
        ({"ops": "/"}, "base.data.options.ops", "some of + - *"),
        ({"problems": 5000, "max_operand": 9}, "base.data.options.problems", "at most 100"),
    ],
)
def test_bad_options_name_their_line_and_key(plugin_dir, capsys, monkeypatch, options, key,
                                             expected):  # fmt: skip
    monkeypatch.chdir(plugin_dir)
    spec = arith_spec(plugin_dir, {**DATA, "options": options})
    assert main(["run", str(spec)]) == 2
    line = one_line(capsys)
    assert "spec.yaml:" in line and f": {key}: " in line and expected in line, line
    nothing_started(plugin_dir)


def test_fields_a_corpus_does_not_read_are_refused():
    with pytest.raises(ConfigError, match="options: unset: corpus pydoc takes no options"):
        DataConfig(corpus="pydoc", options={"x": 1})
    with pytest.raises(ConfigError, match="num_kv_pairs: unset unless corpus is mqar"):
        DataConfig(corpus="passkey", num_kv_pairs=4)
    with pytest.raises(
        ConfigError, match="path: unset unless corpus is tinyshakespeare or wikitext2 or "
    ):
        DataConfig(corpus="pydoc", path="/x")  # fmt: skip
    with pytest.raises(ConfigError, match="corpus: one of pydoc, .*, got 'nope'"):
        DataConfig(corpus="nope")


def test_a_phase_may_be_a_plugin_corpus(plugin_dir):
    data = {"phases": [{"corpus": "pydoc", "steps": 4},
                       {"corpus": "arith", "steps": 4, "options": {"problems": 400}}],
            "seq_len": 16, "batch_size": 4}  # fmt: skip
    spec = load_spec(arith_spec(plugin_dir, data, **{"base/train/steps": 8}), available=NO_GPU)
    parts = spec.base.data.phase_configs()
    assert parts[1].options.problems == 400 and parts[0].options is None
    bad = {**data, "phases": [data["phases"][0], {"corpus": "mqar", "steps": 4}]}
    with pytest.raises(SpecError, match=r"phases\[1\].corpus: one of pydoc, tinyshakespeare, "
                       r"wikitext2, text, arith, got 'mqar'"):  # fmt: skip
        load_spec(arith_spec(plugin_dir, bad), available=NO_GPU)


def test_a_failing_or_wrong_texts_function_is_one_line_before_anything_starts(
    plugin_dir, capsys, monkeypatch
):
    monkeypatch.chdir(plugin_dir)
    (plugin_dir / "broken.py").write_text(textwrap.dedent('''
        from nlsweep import register_corpus

        @register_corpus("broken")
        def texts(cfg):
            raise FileNotFoundError("no such file: /data/corpus.txt")

        @register_corpus("one_text")
        def one(cfg):
            return "only the training text"
    '''))  # fmt: skip
    cases = {
        "broken": "FileNotFoundError: no such file: /data/corpus.txt",
        "one_text": "returned str; expected (training, held-out), each a string or a list",
    }
    for name, said in cases.items():
        spec = plugin_dir / "spec.yaml"
        spec.write_text(spec_text({"plugins": ["broken.py"], "base/data/corpus": name}))
        assert main(["run", str(spec)]) == 2
        line = one_line(capsys)
        assert f"base.data: corpus {name}" in line and said in line, line
        nothing_started(plugin_dir)


def test_registering_a_corpus_twice_names_both(plugin_dir):
    def a(cfg):
        return "x", "y"

    def b(cfg):
        return "x", "y"

    register_corpus("twice", a)
    register_corpus("twice", a)  # the same function again (a module imported twice) is fine
    with pytest.raises(RegistryError, match=r"corpus twice registered twice: by .*\.a .* by .*\.b"):
        register_corpus("twice", b)
    with pytest.raises(RegistryError, match="exactly one of texts"):
        register_corpus("both", a, load=b)
    with pytest.raises(RegistryError, match="uses seed; expected some of path"):
        register_corpus("odd", a, uses=("seed",))
    with pytest.raises(RegistryError, match="a Python identifier"):
        register_corpus("my corpus", a)
