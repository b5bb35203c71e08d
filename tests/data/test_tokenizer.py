"""Tokenizers and the per-byte metric: SentencePiece trained on the training split alone,
deterministically and cached; val/bpb == val/bpc for ASCII characters; val/bpb equals the
summed token losses over the held-out bytes, computed by hand; untrainable settings are one
line before any trial starts."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from models.errors import ConfigError
from nlsweep.config.specfile import SpecError
from nlsweep.data import tokenizer as tk
from nlsweep.data.config import DataConfig
from nlsweep.data.corpora import DataError
from nlsweep.data.load import load_corpus
from nlsweep.data.sources import split_tail_at_line
from nlsweep.data.streams import build_tokenizer
from nlsweep.execution.preflight import prepare_data
from nlsweep.spec import load_spec
from nlsweep.training.trainer import Trainer
from nlsweep.training.trial import TrialConfig
from tests.helpers import spec_text

WORDS = "the cat sat on the mat and the dog ate the hat while a bird sang of the sun"
LINES = [" ".join(WORDS.split()[i : i + 6 + i % 5]) for i in range(12)]
ASCII = "\n".join(LINES * 40) + "\n"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "nlsweep"


def text_file(tmp_path, text: str):
    p = tmp_path / "corpus.txt"
    p.write_text(text, encoding="utf-8")
    return str(p)


def trainer(path: str, **data) -> Trainer:
    raw = {
        "model": {"kind": "nested_lstm", "d_model": 16, "d_ff": 24},
        "cms": {"periods": {"fast": 1, "medium": 2, "slow": 4}},
        "optim": {"kind": "adam", "lr": 3e-3},
        "data": {"corpus": "text", "path": path, "seq_len": 8, "batch_size": 2, **data},
        "train": {"steps": 4, "eval_every": 4, "eval_batches": 2, "seed": 0, "threads": 1},
    }
    return Trainer(TrialConfig.from_dict(raw), device=torch.device("cpu"))


def test_sentencepiece_is_deterministic_lossless_and_counts_bytes():
    train, val = ASCII, "the sun sang\nof the cat ÿ€ a bird\n"
    a = tk.train_sentencepiece(train, 36, "unigram")
    assert a == tk.train_sentencepiece(train, 36, "unigram")  # byte for byte
    tok = tk.SentencePieceTokenizer(a)
    ids, units = tok.encode_with_units(val)
    assert int(units["bytes"].sum()) == len(val.encode("utf-8"))
    assert int(units["chars"].sum()) == len(val)
    # characters the training split never had are <unk> (id 0) and count what they replaced
    unk = ids == 0
    assert unk.any() and int(units["bytes"][unk].sum()) == len("ÿ€".encode())
    assert tok.decode(tok.encode("the cat\nsat").tolist()) == "the cat\nsat"
    bpe = tk.SentencePieceTokenizer(tk.train_sentencepiece(train, 36, "bpe"))
    assert bpe.sp.get_piece_size() == 36 and bpe.decode(bpe.encode("the mat").tolist()) == "the mat"


def test_char_units_are_utf8_bytes():
    ids, units = tk.CharTokenizer("ab").encode_with_units("aé€😀")
    assert units["bytes"].tolist() == [1, 2, 3, 4] and units["chars"].tolist() == [1, 1, 1, 1]
    assert ids.tolist() == [1, 0, 0, 0]


def test_model_is_trained_once_then_read_from_the_cache(cache, monkeypatch):
    cfg = DataConfig(corpus="pydoc", tokenizer="sentencepiece", vocab_size=36)
    first = build_tokenizer(cfg, ASCII)
    assert len(list((cache / "tokenizers").glob("*.model"))) == 1

    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(tk, "train_sentencepiece", no_training)
    assert build_tokenizer(cfg, ASCII).model == first.model  # same key: the cached model
    with pytest.raises(AssertionError, match="trained again"):  # other text: another key
        build_tokenizer(cfg, ASCII + "more")


def test_char_ascii_bpb_equals_bpc(tmp_path, cache):
    t = trainer(text_file(tmp_path, ASCII))
    last = list(t.run())[-1]
    assert last["val/bpb"] == pytest.approx(last["val/bpc"], rel=1e-12)
    assert last["val/bpc"] == pytest.approx(last["val/loss"] / math.log(2), rel=1e-12)


def test_char_non_ascii_bpb_is_per_byte(tmp_path, cache):
    text = ASCII.replace("cat", "çat").replace("sun", "sün")
    t = trainer(text_file(tmp_path, text))
    last = list(t.run())[-1]
    val = t.corpus.val
    scored = len(val) - 1  # final evaluation: every held-out target once
    nbytes = int(t.corpus.val_units["bytes"][1:].sum())
    assert nbytes > scored
    assert last["val/bpc"] == pytest.approx(last["val/loss"] / math.log(2), rel=1e-12)
    assert last["val/bpb"] == pytest.approx(last["val/bpc"] * scored / nbytes, rel=1e-12)


def test_sentencepiece_bpb_by_hand(tmp_path, cache):
    path = text_file(tmp_path, ASCII)
    t = trainer(path, tokenizer="sentencepiece", vocab_size=36, model_type="unigram")
    last = list(t.run())[-1]
    assert last["eval/full_split"] == 1.0
    # By hand: the model over the whole held-out split in one pass per row (state reset per
    # window as the trainer does), the summed loss over every target, and the bytes of the
    # held-out text those targets spell (all of it but the first token's).
    tok, val_text = t.corpus.vocab, split_tail_at_line(ASCII, 0.1)[1]
    ids, _ = tok.encode_with_units(val_text)
    assert torch.equal(ids, t.corpus.val.long())
    nats, n = 0.0, 0
    t.model.eval()
    with torch.no_grad():
        for x, y in t.heldout.full_windows():
            logits, _ = t.model(x, None)
            nats += F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum",
                ignore_index=-100,
            ).item()  # fmt: skip
            n += int((y != -100).sum())
    first = len(tok.decode([int(ids[0])]).encode("utf-8"))
    nbytes = len(val_text.encode("utf-8")) - first
    assert n == len(ids) - 1
    assert last["val/bpb"] == pytest.approx(nats / math.log(2) / nbytes, rel=1e-9)
    assert last["val/loss"] == pytest.approx(nats / n, rel=1e-9)  # per token
    chars = len(val_text) - len(tok.decode([int(ids[0])]))
    assert last["val/bpc"] == pytest.approx(nats / math.log(2) / chars, rel=1e-9)
    assert last["data/val_unk_rate"] == 0.0 and 0 <= last["data/val_overlap"] <= 1


def test_tokenizer_path_loads_a_trained_model(tmp_path, cache):
    model = tmp_path / "m.model"
    model.write_bytes(tk.train_sentencepiece(ASCII, 36, "bpe"))
    c = load_corpus(DataConfig(corpus="text", path=text_file(tmp_path, ASCII),
                               tokenizer="sentencepiece", tokenizer_path=str(model)))  # fmt: skip
    assert len(c.vocab) == 36 and c.vocab.model == model.read_bytes()
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(DataError, match=r"^data.tokenizer_path: .*bad.model is not a Sentence"):
        build_tokenizer(DataConfig(tokenizer="sentencepiece", tokenizer_path=str(bad)), ASCII)


@pytest.mark.parametrize(
    ("fields", "key", "expected"),
    [
        ({"tokenizer": "sentencepiece"}, "vocab_size", "a vocabulary size"),
        ({"vocab_size": 100}, "vocab_size", "unset unless corpus is a task or tokenizer"),
        ({"model_type": "bpe"}, "model_type", "unset unless tokenizer is sentencepiece"),
        ({"tokenizer_path": "x.model"}, "tokenizer_path", "unset unless tokenizer is"),
        ({"tokenizer": "sentencepiece", "corpus": "mqar"}, "tokenizer", "char for a generated"),
        ({"tokenizer": "sentencepiece", "tokenizer_path": "m", "vocab_size": 9}, "vocab_size",
         "unset with tokenizer_path"),
    ],
)  # fmt: skip
def test_bad_tokenizer_settings(fields, key, expected):
    with pytest.raises(ConfigError) as e:
        DataConfig(**fields)
    assert e.value.key == key and expected in e.value.expected


SPEC = """\
name: spm
description: subword
metric: {metric}
mode: min
base:
  model: {{kind: nested_lstm, d_model: 16, d_ff: 32}}
  cms:   {{periods: {{fast: 1, medium: 2, slow: 4}}}}
  optim: {{kind: adam, lr: 3.0e-3}}
  data:  {{corpus: text, path: {path}, seq_len: 8, batch_size: 2, tokenizer: sentencepiece,
          vocab_size: {vocab}}}
  train: {{steps: 4, eval_every: 2, eval_batches: 2, seed: 0}}
space:
  train.seed: {{grid: [0, 1]}}
search: {{algorithm: grid}}
resources: {{cpu: 1, gpu: 0}}
"""


def spm_spec(changes: dict | None = None, path="x", vocab=60, metric="val/bpb") -> str:
    """SPEC as a dict with `spec_text`'s changes, dumped as YAML."""
    return spec_text(
        changes, base=yaml.safe_load(SPEC.format(metric=metric, path=path, vocab=vocab))
    )


def test_untrainable_vocabulary_is_one_line_before_any_trial(tmp_path, cache):
    spec = tmp_path / "spm.yaml"
    spec.write_text(SPEC.format(metric="val/bpb", path=text_file(tmp_path, ASCII), vocab=5000))
    s = load_spec(spec, tracking_uri="sqlite:///x.db", storage=str(tmp_path / "ray"))
    with pytest.raises(SpecError) as e:
        prepare_data(s)
    line = str(e.value)
    assert "\n" not in line and "data.vocab_size: at most" in line and "got 5000" in line
    assert not (tmp_path / "ray").exists()
    spec.write_text(SPEC.format(metric="val/bpb", path=text_file(tmp_path, ASCII), vocab=36))
    prepare_data(load_spec(spec, tracking_uri="sqlite:///x.db", storage=str(tmp_path / "r")))
    assert len(list((cache / "tokenizers").glob("*.model"))) == 1  # trained once, for all


def test_bpb_objective_is_for_text_corpora(tmp_path):
    spec = tmp_path / "t.yaml"
    task = {"corpus": "mqar", "seq_len": 32, "batch_size": 2}
    spec.write_text(
        spm_spec({"base/data": task, "base/model": {"kind": "nested_lstm", "d_model": 16}})
    )
    with pytest.raises(SpecError) as e:
        load_spec(spec, tracking_uri="sqlite:///x.db", storage=str(tmp_path))
    assert "metric: one of val/bpc, val/loss, val/ppl, train/loss, val/recall_acc (" in str(e.value)
    assert "got 'val/bpb'" in str(e.value)


@pytest.mark.slow
def test_subword_sweep_records_its_tokenizer(tmp_path, cache, monkeypatch):
    from nlsweep.cli import main
    from nlsweep.tracking.store import Tracker
    from nlsweep.tracking.tags import TAG_ROLE

    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "spm.yaml"
    path = text_file(tmp_path, ASCII)

    def sizes(*vocab):
        space = {"data.vocab_size": {"grid": list(vocab)}, "train.seed": {"grid": [0, 1]}}
        return spm_spec({"space": space}, path=path, vocab=36)

    spec.write_text(sizes(36))
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    assert main(["run", str(spec), "--tracking-uri", uri, "--storage", str(tmp_path / "ray")]) == 0
    tracker = Tracker(uri)
    runs = tracker.runs("spm")
    parent = next(r for r in runs if r.data.tags[TAG_ROLE] == "sweep")
    trials = [r for r in runs if r.data.tags[TAG_ROLE] == "trial"]
    assert len(trials) == 2
    for r in trials:
        p = r.data.params
        assert (p["data.tokenizer"], p["data.vocab_size"], p["data.model_type"]) == (
            "sentencepiece", "36", "unigram",
        )  # fmt: skip
        assert 0 < r.data.metrics["val/bpb"] < r.data.metrics["val/loss"] / math.log(2)
    (cached,) = (cache / "tokenizers").glob("*.model")
    sha = tk.SentencePieceTokenizer(cached.read_bytes()).sha256
    (name,) = tracker.artifacts(parent.info.run_id, "tokenizer")
    assert name == f"tokenizer/text-unigram36-{sha[:12]}.model"
    got = tracker.download(parent.info.run_id, name, tmp_path / "dl")
    assert Path(got).read_bytes() == cached.read_bytes()
    assert "val/bpb" in (tmp_path / "reports" / "spm.md").read_text()
    # --extend to a new vocabulary size: its model joins the parent run's artifacts
    spec.write_text(sizes(36, 30))
    argv = ["run", str(spec), "--tracking-uri", uri, "--storage", str(tmp_path / "ray")]
    assert main([*argv, "--extend"]) == 0
    names = tracker.artifacts(parent.info.run_id, "tokenizer")
    assert len(names) == 2 and any(n.startswith("tokenizer/text-unigram30-") for n in names)


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_bytes_scored_do_not_depend_on_batch_or_window(tmp_path, cache, batch_size):
    """The final evaluation charges every held-out target's bytes exactly once, however the
    split is cut into rows (batch size) and windows along the stream."""
    text = ASCII.replace("cat", "çat")
    t = trainer(text_file(tmp_path, text), batch_size=batch_size, tokenizer="sentencepiece",
                vocab_size=36)  # fmt: skip
    ids, units = t.corpus.val, t.corpus.val_units
    expected = {k: int(v[1:].sum()) for k, v in units.items()}  # all targets: not the first
    for window in (None, 5, 10**6):
        t.evaluate(t.final_windows(window), t.unit_windows(True, window))
        assert t.eval_units == expected and t.eval_tokens == len(ids) - 1


def test_tokenizer_models_kept_beside_the_experiment_or_one_warning(tmp_path):
    from nlsweep.execution.summary import record_tokenizers

    class NoArtifacts:
        def log_artifacts(self, *a):
            raise RuntimeError("artifact store refused\nsecond line")

    said = []
    record_tokenizers(NoArtifacts(), "p", {"a.model": b"m"}, str(tmp_path / "exp"), said.append)
    assert (tmp_path / "exp" / "tokenizer" / "a.model").read_bytes() == b"m"
    assert "went to" in said[0] and "artifact store refused" in said[0]
    blocker = tmp_path / "file"
    blocker.write_text("x")  # storage that cannot take a folder either
    record_tokenizers(NoArtifacts(), "p", {"a.model": b"m"}, str(blocker / "exp"), said.append)
    assert len(said) == 2 and "\n" not in said[1] and "were not recorded" in said[1]
