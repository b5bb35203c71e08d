"""Continual learning over `data.phases`: one vocabulary from the union of the training
splits, batches phase after phase, per-phase held-out bpb at every evaluation (phases seen and
the next), forgetting and the phase matrix at the end, exact resume across a boundary, bad
phase specs as one line, and the report's continual-learning section."""

import math

import pytest
import torch
import torch.nn.functional as F

from models.errors import ConfigError
from nlsweep.config.specfile import SpecError
from nlsweep.data import streams as data_mod
from nlsweep.data.phases import PhasedBatcher
from nlsweep.data.sources import split_tail_at_line
from nlsweep.data.streams import StreamBatcher
from nlsweep.report.continual import continual_section, phase_names
from nlsweep.report.results import Context, Trial
from nlsweep.spec import load_spec
from nlsweep.tracking.read import RunData
from nlsweep.training.trainer import Trainer
from nlsweep.training.trial import TrialConfig

PROSE = "\n".join(
    " ".join(["the", "cat", "sat", "on", "the", "mat", "while", "a", "bird", "sang"][i % 7 :])
    for i in range(300)
)
CODE = "\n".join(f"def f{i % 13}(x): return x * {i % 10} + {(i * 7) % 10}" for i in range(300))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "nlsweep"


@pytest.fixture
def files(tmp_path):
    a, b = tmp_path / "prose.txt", tmp_path / "code.txt"
    a.write_text(PROSE + "\n")
    b.write_text(CODE + "\n")
    return str(a), str(b)


def raw_config(files, steps=(4, 4), eval_every=2, **data):
    return {
        "model": {"kind": "nested_lstm", "d_model": 16, "d_ff": 24},
        "cms": {"periods": {"fast": 1, "medium": 2, "slow": 4}},
        "optim": {"kind": "adam", "lr": 1e-2},
        "state": {"mode": "persistent"},
        "data": {
            "phases": [
                {"corpus": "text", "path": files[0], "steps": steps[0], "name": "prose"},
                {"corpus": "text", "path": files[1], "steps": steps[1], "name": "code"},
            ],
            "seq_len": 8,
            "batch_size": 2,
            **data,
        },
        "train": {"eval_every": eval_every, "eval_batches": 3, "seed": 0, "threads": 1},
    }


def make(files, **kw) -> Trainer:
    return Trainer(TrialConfig.from_dict(raw_config(files, **kw)), device=torch.device("cpu"))


def test_steps_are_the_phases_total_and_the_corpus_is_named_phases(files):
    cfg = TrialConfig.from_dict(raw_config(files, steps=(4, 6)))
    assert cfg.train.steps == 10 and cfg.data.corpus == "phases"
    assert [p.name for p in cfg.data.phases] == ["prose", "code"]
    default = raw_config(files)
    default["data"]["phases"] = [{"corpus": "pydoc", "steps": 2}, {"corpus": "text",
                                 "path": files[1], "steps": 2}]  # fmt: skip
    assert [p.name for p in TrialConfig.from_dict(default).data.phases] == ["pydoc", "text"]


def phase_edit(i, **kv):
    def edit(raw):
        raw["data"]["phases"][i].update(kv)

    return edit


BAD = {
    "one phase": (lambda r: r["data"]["phases"].pop(), "data.phases", "at least two phases"),
    "corpus beside phases": (
        lambda r: r["data"].update(corpus="pydoc"), "data.corpus", "unset with phases"),
    "path beside phases": (lambda r: r["data"].update(path="x"), "data.path", "unset with phases"),
    "same name twice": (phase_edit(1, name="prose"), "data.phases[1].name", "unique"),
    "a task as a phase": (phase_edit(0, corpus="mqar"), "data.phases[0].corpus", "one of"),
    "no corpus": (lambda r: r["data"]["phases"][1].pop("corpus"), "data.phases[1].corpus",
                  "one of pydoc"),
    "no steps": (lambda r: r["data"]["phases"][1].pop("steps"), "data.phases[1].steps",
                 "positive"),
    "a name unfit for a metric": (phase_edit(0, name="a/b"), "data.phases[0].name", "letters"),
    "val_fraction on wikitext2": (phase_edit(0, corpus="wikitext2", path="", val_fraction=0.2),
                                  "data.phases[0].val_fraction", "unset for wikitext2"),
    "unknown key": (phase_edit(0, seq_len=4), "data.phases[0].seq_len", "unknown key"),
    "phase not ending on an evaluation": (
        phase_edit(0, steps=3), "data.phases[0].steps", "a multiple of train.eval_every (2)"),
    "steps disagreeing with the phases": (
        lambda r: r["train"].update(steps=5), "train.steps", "the phases' total 8"),
    "phases on a generated task": (lambda r: r["data"].update(corpus="phases", phases=None),
                                   "data.phases", "a list of phases"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_phases_are_one_error_naming_the_key(files, case):
    edit, key, expected = BAD[case]
    raw = raw_config(files)
    edit(raw)
    with pytest.raises(ConfigError) as e:
        TrialConfig.from_dict(raw)
    assert e.value.key == key and expected in e.value.expected


def small_spec(tmp_path, files, steps, eval_every):
    """A one-trial spec over the two phases (the second named code), as a file."""
    spec = tmp_path / "p.yaml"
    spec.write_text(
        f"""name: p
metric: val/mean_bpb
base:
  model: {{kind: nested_lstm, d_model: 16}}
  cms:   {{periods: {{fast: 1, medium: 2, slow: 4}}}}
  data:
    phases:
      - {{corpus: text, path: {files[0]}, steps: {steps[0]}}}
      - {{corpus: text, path: {files[1]}, steps: {steps[1]}, name: code}}
  train: {{eval_every: {eval_every}}}
space:
  train.seed: {{grid: [0]}}
"""
    )
    return spec


def test_bad_phase_in_a_spec_names_its_line(tmp_path, files):
    spec = small_spec(tmp_path, files, (4, 3), 2)
    with pytest.raises(SpecError) as e:
        load_spec(spec, tracking_uri="sqlite:///x.db", storage=str(tmp_path))
    assert f"{spec}:9: base.data.phases[1].steps" in str(e.value)
    assert "\n" not in str(e.value)
    without = spec.read_text().replace("    phases:\n", "    corpus: text\n    path: x\n")
    without = "\n".join(ln for ln in without.splitlines() if "- {corpus" not in ln)
    spec.write_text(without)
    with pytest.raises(SpecError, match="val/mean_bpb is reported by corpus phases"):
        load_spec(spec, tracking_uri="sqlite:///x.db", storage=str(tmp_path))


def test_smoke_gives_each_phase_one_evaluation(tmp_path, files):
    spec = small_spec(tmp_path, files, (400, 400), 100)
    s = load_spec(spec, tracking_uri="sqlite:///x.db", storage=str(tmp_path), smoke=True)
    assert [p.steps for p in s.base.data.phases] == [10, 10]
    assert (s.base.train.steps, s.base.train.eval_every) == (20, 10)


def test_one_vocabulary_from_the_union_of_training_splits(files, cache, monkeypatch):
    seen = []
    real = data_mod.cached_sentencepiece
    monkeypatch.setattr(
        data_mod, "cached_sentencepiece", lambda text, *a: seen.append(text) or real(text, *a)
    )
    t = make(files, tokenizer="sentencepiece", vocab_size=40)
    heads = [split_tail_at_line(t + "\n", 0.1)[0] for t in (PROSE, CODE)]  # a line boundary
    assert seen == ["\n".join(heads)]  # no held-out text
    assert all(p.vocab is t.corpus.vocab for p in t.corpus.parts)
    chars = make(files)  # characters: the code phase's digits are in the one vocabulary
    assert chars.corpus.parts[0].vocab is chars.corpus.vocab
    assert float((chars.corpus.parts[1].val == 0).float().mean()) == 0.0
    assert "7" in chars.corpus.vocab.index and "7" not in PROSE


def test_batches_come_phase_after_phase_and_the_cursor_round_trips():
    a, b = torch.arange(100), torch.arange(1000, 1100)
    pb = PhasedBatcher([StreamBatcher(a, 2, 5), StreamBatcher(b, 2, 5)], [3, 2])
    got = [pb.next() for _ in range(4)]
    assert [int(x[0, 0]) for x, _, _ in got] == [0, 5, 10, 1000]
    assert [restart for _, _, restart in got] == [True, False, False, True]  # new streams
    sd = pb.state_dict()
    again = PhasedBatcher([StreamBatcher(a, 2, 5), StreamBatcher(b, 2, 5)], [3, 2])
    again.load_state_dict(sd)
    assert torch.equal(again.next()[0], pb.next()[0])
    assert int(pb.next()[0][0, 0]) == 1010  # past the end: the last phase goes on


def by_hand_bpb(t: Trainer, j: int) -> float:
    """Phase j's held-out bpb over the sampled windows, recomputed from the model."""
    B, T = t.cfg.data.batch_size, t.cfg.data.seq_len
    part = t.corpus.parts[j]
    held = StreamBatcher(part.val, B, T)
    nbytes = StreamBatcher(part.val_units["bytes"], B, T)
    nats, total, state = 0.0, 0, None
    t.model.eval()
    with torch.no_grad():
        for k in range(min(t.cfg.train.eval_batches, held.windows_per_epoch)):
            x, y = held.window(k)
            logits, state = t.model(x, state)
            nats += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                    reduction="sum").item()  # fmt: skip
            total += int(nbytes.window(k)[1].sum())
    t.model.train()
    return nats / math.log(2) / total


def test_every_evaluation_scores_the_phases_seen_and_the_next(files):
    t = make(files, steps=(4, 4))
    evals = list(t.run())
    assert [m["step"] for m in evals] == [2, 4, 6, 8]
    assert [m["phase/index"] for m in evals] == [0, 0, 1, 1]
    assert [m["phase/end"] for m in evals] == [0, 1, 0, 1]
    for m in evals:  # both phases from the first evaluation on: the next one too
        assert {"val/prose/bpb", "val/code/bpb"} <= set(m)
    for m in evals[:-1]:  # the headline scores the current phase (the last: its whole split)
        cur = "prose" if m["phase/index"] == 0 else "code"
        assert m["val/bpb"] == m[f"val/{cur}/bpb"]
    assert evals[-1]["eval/full_split"] == 1.0
    assert evals[-1]["data/val_tokens"] == len(t.corpus.parts[1].val) - 1
    assert evals[0]["val/mean_bpb"] == evals[0]["val/prose/bpb"]
    last = evals[-1]
    assert last["val/mean_bpb"] == pytest.approx((last["val/prose/bpb"] + last["val/code/bpb"]) / 2)
    # the numbers are the model's: phase 1's bpb recomputed by hand after the run
    assert last["val/prose/bpb"] == pytest.approx(by_hand_bpb(t, 0), rel=1e-9)
    assert last["val/code/bpb"] == pytest.approx(by_hand_bpb(t, 1), rel=1e-9)
    best = min(m["val/prose/bpb"] for m in evals)
    assert last["forgetting/prose"] == pytest.approx(last["val/prose/bpb"] - best)
    assert last["forgetting/mean"] == last["forgetting/prose"] and "forgetting/code" not in last
    for trained, step in (("prose", 4), ("code", 8)):
        row = next(m for m in evals if m["step"] == step)
        for on in ("prose", "code"):
            assert last[f"continual/after_{trained}/{on}/bpb"] == row[f"val/{on}/bpb"]
    assert all(not k.startswith(("forgetting/", "continual/")) for m in evals[:-1] for k in m)
    assert last["data/code/val_overlap"] == t.corpus.parts[1].val_overlap > 0.5  # repeats


def test_a_third_phase_is_scored_only_once_it_is_next(files, tmp_path):
    third = tmp_path / "third.txt"
    third.write_text(PROSE.upper() + "\n")
    raw = raw_config(files, steps=(2, 2))
    raw["data"]["phases"].append({"corpus": "text", "path": str(third), "steps": 2, "name": "c"})
    evals = list(Trainer(TrialConfig.from_dict(raw), device=torch.device("cpu")).run())
    assert ["val/c/bpb" in m for m in evals] == [False, True, True]
    assert evals[0]["val/mean_bpb"] == evals[0]["val/prose/bpb"]
    last = evals[-1]
    assert last["continual/after_c/c/bpb"] == last["val/c/bpb"]
    assert "continual/after_prose/c/bpb" not in last  # not evaluated then
    assert last["forgetting/mean"] == pytest.approx(
        (last["forgetting/prose"] + last["forgetting/code"]) / 2
    )


def test_resume_across_a_phase_boundary_is_exact(files):
    whole = make(files, steps=(4, 4))
    expected = list(whole.run())[-1]
    first = make(files, steps=(4, 4))
    run = first.run()
    while first.step < 4:  # stop at the end of phase 1 (after its evaluation)
        next(run)
    sd = first.state_dict()
    second = make(files, steps=(4, 4))
    second.load_state_dict(sd)
    got = list(second.run())[-1]
    timing = ("perf/", "memory/")
    for k, v in expected.items():
        if not k.startswith(timing):
            assert got[k] == v, k


def run_data(metrics: dict, seed: int, params: dict) -> RunData:
    return RunData(f"r{seed}", "x", "FINISHED", 0, 1, params, {}, metrics)


def test_report_section_pools_seeds_with_intervals():
    params = {"data.phases": str([{"corpus": "tinyshakespeare", "steps": 2, "path": "",
                                   "val_fraction": None, "name": "ts"},
                                  {"corpus": "pydoc", "steps": 2, "path": "",
                                   "val_fraction": None, "name": "py"}])}  # fmt: skip
    assert phase_names(params) == ["ts", "py"]
    trials = []
    for model, forget in (("a", [0.1, 0.2, 0.3]), ("b", [0.0, 0.0, 0.3])):
        for seed, f in enumerate(forget):
            after = {"ts/ts": 2.0 + seed, "ts/py": 5.0, "py/ts": 2.0 + seed + f, "py/py": 3.0}
            m = {f"continual/after_{k}/bpb": v for k, v in after.items()}
            m.update({"forgetting/ts": f, "forgetting/mean": f, "val/mean_bpb": 2 + f})
            trials.append(Trial(run_data(m, seed, params), {"model.kind": model}, seed, 1.0, 1.0))
    ctx = Context(None, "x", "val/mean_bpb", "min", "grid", ["model.kind"], {"model.kind": "a"}, {})
    text = "\n".join(continual_section(trials, ctx))
    assert "## Continual learning" in text and "`ts`, `py`" in text
    # a: forgetting 0.1, 0.2, 0.3 -> mean 0.2, t-interval 0.2 +- 4.303 * 0.1 / sqrt(3)
    half = 4.302652729911275 * 0.1 / math.sqrt(3)
    assert f"| kind=a | 3 | 2.200 [{2.2 - half:.3f}, {2.2 + half:.3f}] |" in text
    assert f"0.200 [{0.2 - half:.3f}, {0.2 + half:.3f}]" in text
    assert "| after ts | 3.000 ± 1.000 | 5.000 ± 0.000 |" in text  # seeds 0, 1, 2 pooled
    assert "| kind=b | 3 |" in text and "-0.100" in text  # paired with a by seed
    none = [Trial(run_data({"val/bpc": 1.0}, 0, {}), {}, 0, 1.0, 1.0)]
    assert continual_section(none, ctx) == []


@pytest.mark.slow
def test_phased_sweep_logs_forgetting_and_reports_it(tmp_path, files, cache, monkeypatch):
    from nlsweep.cli import main
    from nlsweep.tracking.store import Tracker
    from nlsweep.tracking.tags import TAG_ROLE

    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "cl.yaml"
    spec.write_text(
        f"""name: cl
metric: val/mean_bpb
base:
  model: {{kind: nested_lstm, d_model: 16}}
  cms:   {{periods: {{fast: 1, medium: 2, slow: 4}}}}
  state: {{mode: persistent}}
  data:
    phases:
      - {{corpus: text, path: {files[0]}, steps: 4, name: prose}}
      - {{corpus: text, path: {files[1]}, steps: 4, name: code}}
    seq_len: 8
    batch_size: 2
    tokenizer: sentencepiece
    vocab_size: 40
  train: {{eval_every: 2, eval_batches: 2}}
space:
  cms.periods.slow: {{grid: [4, 8]}}
  train.seed: {{grid: [0, 1]}}
resources: {{cpu: 1, gpu: 0}}
"""
    )
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    assert main(["run", str(spec), "--tracking-uri", uri, "--storage", str(tmp_path / "ray")]) == 0
    tracker = Tracker(uri)
    runs = tracker.runs("cl")
    parent = next(r for r in runs if r.data.tags[TAG_ROLE] == "sweep")
    trials = [r for r in runs if r.data.tags[TAG_ROLE] == "trial"]
    assert len(trials) == 4
    for r in trials:
        m = r.data.metrics
        assert r.data.params["data.corpus"] == "phases" and m["phase/index"] == 1
        assert m["forgetting/mean"] == m["forgetting/prose"] >= 0
        assert m["val/mean_bpb"] == pytest.approx((m["val/prose/bpb"] + m["val/code/bpb"]) / 2)
        hist = tracker.history(r.info.run_id, "val/prose/bpb")
        assert [h.step for h in hist] == [2, 4, 6, 8]
        assert m["continual/after_prose/prose/bpb"] == next(h.value for h in hist if h.step == 4)
    (name,) = tracker.artifacts(parent.info.run_id, "tokenizer")
    assert name.startswith("tokenizer/text+text-unigram40-")  # one model for both phases
    report = (tmp_path / "reports" / "cl.md").read_text()
    assert "## Continual learning" in report and "| after prose |" in report
    assert "shingles also in the phase's training split: `prose` 100.0%" in report
    assert "| slow=8 | 2 |" in report


def test_a_second_load_of_the_phases_reads_no_raw_text(files, cache, monkeypatch):
    from nlsweep.data import corpora, load_corpus, phases, sources

    cfg = TrialConfig.from_dict(raw_config(files)).data
    first = load_corpus(cfg)

    def no(*a, **k):
        raise AssertionError("raw text was read")

    monkeypatch.setattr(sources, "documents", no)
    monkeypatch.setattr(corpora, "load_texts", no)
    monkeypatch.setattr(phases, "load_texts", no)
    again = load_corpus(cfg)  # the shared tokenizer and every phase's arrays, from the cache
    assert again.vocab.chars == first.vocab.chars
    for a, b in zip(first.parts, again.parts):
        assert a.prepared == b.prepared and torch.equal(a.train, b.train)
