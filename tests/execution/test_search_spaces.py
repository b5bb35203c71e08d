"""Each search space runs as written at --smoke size (one seed, to keep CI short), and the
mechanism it sweeps visibly acted in every trial's MLflow metrics."""

import pytest

from nlsweep.cli import main
from nlsweep.spec import load_spec
from nlsweep.tracking.store import Tracker
from nlsweep.tracking.tags import TAG_ROLE
from tests.helpers import ROOT, has_shakespeare

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not has_shakespeare(), reason="Tiny Shakespeare not in NLSWEEP_DATA"),
]
SPACES = ROOT / "search_spaces"


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray for the module's sweeps (each would start and stop its own): a sweep
    joins the Ray instance its process already runs."""
    import os

    import ray

    from nlsweep.execution.cluster import start_ray

    saved = os.environ.get("PYTHONPATH")
    start_ray()  # points PYTHONPATH at this checkout for Ray's workers
    yield
    ray.shutdown()
    if saved is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = saved


def smoke(tmp_path, monkeypatch, name, *extra):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    rc = main(["run", str(SPACES / f"{name}.yaml"), "--smoke", "--set",
               "space.train.seed={grid: [0]}", "--tracking-uri", uri, "--storage",
               str(tmp_path / "ray"), *extra])  # fmt: skip
    assert rc == 0
    assert (tmp_path / "reports" / f"{name}.md").is_file()
    runs = [r for r in Tracker(uri).runs(name) if r.data.tags.get(TAG_ROLE) == "trial"]
    spec = load_spec(SPACES / f"{name}.yaml", available={"CPU": 2.0, "GPU": 0.0})
    assert len(runs) == spec.plan.trials // 3  # one seed of three
    assert all(r.info.status == "FINISHED" for r in runs)
    return runs


def test_delta_decay(tmp_path, monkeypatch):
    for r in smoke(tmp_path, monkeypatch, "delta_decay"):
        rate = float(r.data.params["optim.decay_rate"])
        norm = r.data.metrics["optim/fast/decay_norm"]
        assert (norm > 0) == (rate > 0), (rate, norm)
        assert r.data.metrics["optim/slow/delta_matrices"] == 2


def test_surprise_weights(tmp_path, monkeypatch):
    for r in smoke(tmp_path, monkeypatch, "surprise_weights"):
        p, m = r.data.params, r.data.metrics
        for level in ("fast", "medium"):
            on = float(p[f"surprise.weights.{level}"]) > 0
            assert (f"surprise/{level}/signal_norm" in m) == on
        if float(p["surprise.weights.fast"]) > 0:
            ratio = m["surprise/fast/signal_norm"] / m["surprise/fast/output_norm"]
            # the faithful signal is O(1/N) of the output; `tokens` brings it to O(1)
            assert (ratio < 0.01) == (p["surprise.signal_scale"] == "none"), ratio


def test_cms_chunks(tmp_path, monkeypatch):
    for r in smoke(tmp_path, monkeypatch, "cms_chunks"):
        p, m = r.data.params, r.data.metrics
        for level in ("medium", "slow"):
            assert m[f"cms/{level}/updates"] == 20 // int(p[f"cms.periods.{level}"])
        assert m["cms/slow/lr_factor"] == {
            "none": 1.0, "inverse": 1 / int(p["cms.periods.slow"]),
            "inverse_sqrt": int(p["cms.periods.slow"]) ** -0.5,
        }[p["cms.lr_scaling"]]  # fmt: skip


def test_persistent_states(tmp_path, monkeypatch):
    runs = {r.data.params["variant"]: r for r in smoke(tmp_path, monkeypatch, "persistent_states")}
    assert set(runs) == {"reset", "persistent", "persistent_surprise", "persistent_seq512"}
    assert "state/norm_h" not in runs["reset"].data.metrics  # nothing carried
    for name in ("persistent", "persistent_surprise", "persistent_seq512"):
        assert runs[name].data.metrics["state/norm_h"] > 0
    assert runs["persistent_seq512"].data.params["data.seq_len"] == "512"
    assert "surprise/fast/aux" in runs["persistent_surprise"].data.metrics
    # at full size every variant evaluates the same held-out tokens (16 streams x 512)
    spec = load_spec(SPACES / "persistent_states.yaml", available={"CPU": 2.0, "GPU": 0.0})
    sizes = set()
    for name in spec.variants:
        d, t = (c := spec.trial_config({"variant": name})).data, c.train
        sizes.add(t.eval_batches * d.seq_len * d.batch_size)
    assert sizes == {16 * 512}


def test_teach_scale(tmp_path, monkeypatch):
    for r in smoke(tmp_path, monkeypatch, "teach_scale"):
        p, m, tags = r.data.params, r.data.metrics, r.data.tags
        on = float(p["teach.scale"]) > 0  # 0: every inner update off, memory writes included
        assert (m["cms_inner/0_p4/updates"] > 0) == on
        assert (m["memory/0/writes"] > 0) == on
        never_bound = on and float(p["teach.clip"]) > 0 and m["teach/clip_rate"] == 0
        assert ("nlsweep.warning.teach.clip" in tags) == never_bound


def test_hope_vs_titan(tmp_path, monkeypatch):
    runs = {r.data.params["variant"]: r for r in smoke(tmp_path, monkeypatch, "hope_vs_titan")}
    kinds = {"transformer", "titans", "hope_attention", "hope", "hope_selfmod"}
    assert set(runs) == kinds | {"titans_persistent", "hope_persistent"}
    assert {r.data.params["model.d_model"] for r in runs.values()} == {"32"}  # equal width
    for variant, r in runs.items():
        m, kind = r.data.metrics, variant.removesuffix("_persistent")
        assert ("memory/0/writes" in m) == (kind in ("titans", "hope", "hope_selfmod"))
        assert ("cms_inner/0_p4/updates" in m) == kind.startswith("hope")
        assert r.data.params["model.n_layers"] == "2"
        persistent = variant.endswith("_persistent")
        assert r.data.params["state.mode"] == ("persistent" if persistent else "reset")


def test_hope_vs_titan_mqar(tmp_path, monkeypatch):
    runs = smoke(tmp_path, monkeypatch, "hope_vs_titan_mqar")
    assert {r.data.params["variant"] for r in runs} == {
        "transformer",
        "titans",
        "hope_attention",
        "hope",
    }
    for r in runs:
        assert 0 <= r.data.metrics["val/recall_acc"] <= 1
        assert r.data.params["model.window"] == "8"


def test_shakespeare_char(tmp_path, monkeypatch):
    (r,) = smoke(tmp_path, monkeypatch, "shakespeare_char")
    p, m = r.data.params, r.data.metrics
    assert p["model.tie_embeddings"] == "False" and p["optim.schedule"] == "cosine"
    # --smoke: 20 steps, warmup 100 -> 1 step; the last update's rate is on the cosine
    from models.optim import OptimConfig

    sched = OptimConfig("adamw", 1e-3, schedule="cosine", warmup_steps=1, min_lr=1e-4)
    assert m["optim/fast/lr"] == pytest.approx(1e-3 * sched.lr_multiplier(19, 20))
    assert 0 <= m["optim/clip_rate"] <= 1 and m["optim/grad_norm"] > 0
    assert m["model/params"] == 816_450  # untied: the head has its own vocab x 128 matrix


def test_passkey_memory(tmp_path, monkeypatch):
    # fixed seeds at smoke size (its adaptive rounds are tested in test_adaptive.py)
    runs = smoke(tmp_path, monkeypatch, "passkey_memory", "--set", "seeds={}")
    runs = {r.data.params["variant"]: r for r in runs}
    assert set(runs) == {"transformer", "titans_fresh", "titans_carried", "hope_fresh",
                         "hope_carried"}  # fmt: skip
    for variant, r in runs.items():
        p, m = r.data.params, r.data.metrics
        assert 0 <= m["val/passkey_acc/len256"] <= 1
        assert p["data.eval_segment"] == "64" and p["model.window"] == "8"
        assert p["state.mode"] == ("persistent" if variant.endswith("carried") else "reset")
        if variant != "transformer":
            assert m["memory/0/writes"] > 0 and "memory/0/bounded" in m
            forget_to = "init" if variant.endswith("carried") else "zero"
            assert p["model.memory_forget_to"] == forget_to


def test_hope_tune(tmp_path, monkeypatch):
    """The Optuna + ASHA space (its smoke run draws 4 trials; a seed grid does not mix with
    optuna): the teach signal drives the CMS chain at the periods drawn, and the report
    explains the search with fANOVA importance."""
    import json

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    rc = main(["run", str(SPACES / "hope_tune.yaml"), "--smoke", "--set", "search.num_samples=4",
               "--tracking-uri", uri, "--storage", str(tmp_path / "ray")])  # fmt: skip
    assert rc == 0
    runs = [r for r in Tracker(uri).runs("hope_tune") if r.data.tags.get(TAG_ROLE) == "trial"]
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    for r in runs:
        p, m = r.data.params, r.data.metrics
        fastest = json.loads(p["cms.token_periods"])[0]
        assert (m[f"cms_inner/0_p{fastest}/updates"] > 0) == (float(p["teach.scale"]) > 0)
    assert "Which factors mattered" in (tmp_path / "reports" / "hope_tune.md").read_text()


def test_continual(tmp_path, monkeypatch):
    runs = {r.data.params["variant"]: r for r in smoke(tmp_path, monkeypatch, "continual")}
    assert set(runs) == {"transformer", "nested_lstm", "lstm_flat", "hope"}
    assert {r.data.params["model.d_model"] for r in runs.values()} == {"32"}  # equal width
    for variant, r in runs.items():
        m = r.data.metrics
        # one vocabulary, three phases, each scored at the end; forgetting of the first two
        assert r.data.params["data.vocab_size"] == "1024" and m["phase/index"] == 2
        for phase in ("tinyshakespeare", "wikitext2", "pydoc"):
            assert m[f"continual/after_pydoc/{phase}/bpb"] == m[f"val/{phase}/bpb"] > 0
        assert {"forgetting/tinyshakespeare", "forgetting/wikitext2"} <= set(m)
        # the CMS periods act in nested_lstm only: slow updates every 16 steps, not every step
        slow = m.get("cms/slow/updates")
        assert (slow is not None and slow < m["cms/fast/updates"]) == (variant == "nested_lstm")
    text = (tmp_path / "reports" / "continual.md").read_text()
    assert "## Continual learning" in text and "| after wikitext2 |" in text


def test_hope_vs_titan_spm(tmp_path, monkeypatch):
    runs = {r.data.params["variant"]: r for r in smoke(tmp_path, monkeypatch, "hope_vs_titan_spm")}
    assert len(runs) == 6
    for r in runs.values():
        p, m = r.data.params, r.data.metrics
        assert (p["data.tokenizer"], p["data.vocab_size"], p["data.model_type"]) == (
            "sentencepiece", "1024", "unigram",
        )  # fmt: skip
        assert m["data/val_unk_rate"] == 0 and 0 < m["val/bpb"] < m["val/loss"] / 0.693


def test_hope_vs_titan_eval(tmp_path, monkeypatch):
    """The shipped evaluation spec: lm-eval's local task and the needles on every kind, carry
    skipped (and said) for the transformer only."""
    runs = smoke(
        tmp_path,
        monkeypatch,
        "hope_vs_titan_eval",
        "--set",
        "eval.needles.lengths=[256]",
        "--set",
        "eval.needles.samples=1",
    )
    for r in runs:
        m, kind = r.data.metrics, r.data.params["model.kind"]
        assert 0 <= m["eval/shakespeare_mc/acc"] <= 1 and "eval/shakespeare_mc/acc_norm" in m
        assert "eval/needle_fresh/acc_len256" in m
        carries = kind != "transformer"
        assert ("eval/needle_carry/acc_len256" in m) == carries
        assert ("nlsweep.warning.eval_needles_carry" in r.data.tags) == (not carries)
    report = (tmp_path / "reports" / "hope_vs_titan_eval.md").read_text()
    assert "### `shakespeare_mc`: acc" in report and "## Needle in a haystack" in report


def test_titans_variants(tmp_path, monkeypatch):
    runs = smoke(tmp_path, monkeypatch, "titans_variants")
    seen = {(r.data.params["variant"], r.data.params["model.persistent_tokens"]) for r in runs}
    assert seen == {(v, n) for v in ("mal", "mac", "mag") for n in ("0", "4")}
    for r in runs:
        p, m = r.data.params, r.data.metrics
        assert p["model.memory_use"] == p["variant"] and m["memory/0/writes"] > 0
        assert p["model.mac_segment"] == ("16" if p["variant"] == "mac" else "0")


def test_titans_variants_passkey(tmp_path, monkeypatch):
    runs = smoke(tmp_path, monkeypatch, "titans_variants_passkey")
    assert {r.data.params["model.memory_use"] for r in runs} == {"mal", "mac", "mag"}
    for r in runs:
        assert 0 <= r.data.metrics["val/passkey_acc/len256"] <= 1
        assert r.data.params["state.mode"] == "persistent"


def test_optimizers(tmp_path, monkeypatch):
    runs = smoke(tmp_path, monkeypatch, "optimizers")
    assert {r.data.params["optim.lr"] for r in runs} == {"0.001", "0.003", "0.01"}
    for r in runs:
        p, m = r.data.params, r.data.metrics
        assert (m.get("optim/fast/muon_matrices", 0) > 0) == (p["optim.kind"] == "muon")
        assert (m.get("optim/fast/decay_norm", 0) > 0) == (p["optim.kind"] == "delta_adam")
