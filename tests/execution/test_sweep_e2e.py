"""End-to-end sweeps through Ray Tune, checked by reading the MLflow store back."""

import json

import pytest

from nlsweep.cli import main
from nlsweep.tracking.store import Tracker
from nlsweep.tracking.tags import (
    PARENT_TAG,
    TAG_DIVERGED,
    TAG_ERROR,
    TAG_ROLE,
    TAG_SHA,
    TAG_STOPPED,
    TAG_TRIAL,
)
from nlsweep.tracking.view import SHARE_KEY, SHARE_TAG
from tests.helpers import edit, spec_text


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Sweeps write reports/ into the working directory: keep them out of the repository."""
    monkeypatch.chdir(tmp_path)


def run_cli(tmp_path, spec, *extra):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["run", str(spec), "--tracking-uri", uri, "--storage", str(tmp_path / "ray"), *extra]
    rc = main(args)
    # Opened only after the run: opening a SQLite store creates it.
    return rc, Tracker(uri)


def split_runs(tracker, name):
    runs = tracker.runs(name)
    parents = [r for r in runs if r.data.tags.get(TAG_ROLE) == "sweep"]
    children = [r for r in runs if r.data.tags.get(TAG_ROLE) == "trial"]
    assert len(parents) + len(children) == len(runs)
    return parents, children


@pytest.mark.slow
def test_grid_sweep_logs_every_trial(tmp_path, write_spec, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    spec = write_spec()
    rc, tracker = run_cli(tmp_path, spec)
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "best trial:" in out and "mlflow ui --backend-store-uri sqlite:///" in out
    assert "trials: 4 done, 0 running, 0 pending; ETA ~0s (estimate: 4 trials'" in out
    report = (tmp_path / "reports" / "tiny.md").read_text()  # written from MLflow at the end
    assert "| R1 | 1 | 2 |" in report.replace("**", "") and "| R2 | 2 | 2 |" in report.replace(
        "**", ""
    )
    assert out.count("FINISHED") >= 4

    parents, children = split_runs(tracker, "tiny")
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED" and PARENT_TAG not in parent.data.tags
    assert parent.data.params["search.algorithm"] == "grid"
    # MLflow's system metrics of the driver's machine, on the parent run only
    assert tracker.history(parent.info.run_id, "system/cpu_utilization_percentage")
    assert not any(k.startswith("system/") for r in children for k in r.data.metrics)
    assert {r.data.tags[PARENT_TAG] for r in children} == {parent.info.run_id}
    assert len({r.data.tags[TAG_TRIAL] for r in children}) == 4
    assert {r.info.run_name for r in children} == {
        "medium=1 seed=0",
        "medium=2 seed=0",
        "medium=1 seed=1",
        "medium=2 seed=1",
    }
    for r in children:
        assert r.info.status == "FINISHED"
        assert r.data.tags[TAG_SHA] == parent.data.tags[TAG_SHA]
        p = r.data.params
        assert r.info.run_name == f"medium={p['cms.periods.medium']} seed={p['train.seed']}"
        assert p["model.d_model"] == "16" and p["cms.periods.slow"] == "4"
        keys = set(r.data.metrics)
        assert {
            "val/bpc",
            "val/loss",
            "val/ppl",
            "train/loss",
            "perf/tokens_per_s",
            "perf/cpu_rss_peak_mb",
            "cms/medium/updates",
            "data/val_overlap",
        } <= keys
        for key in keys:
            assert [m.step for m in tracker.history(r.info.run_id, key)] == [4, 8], key
        medium = int(p["cms.periods.medium"])
        assert r.data.metrics["cms/medium/updates"] == 8 // medium
    # The seeds differ, so the runs differ: nothing was silently shared between trials.
    assert len({round(r.data.metrics["val/bpc"], 9) for r in children}) == 4
    # what the MLflow UI opens on (tests/tracking/test_mlflow_ui.py looks at it in Chromium):
    # the objective is each trial's first metric, so MLflow's compare page plots it first
    assert {next(iter(r.data.metrics)) for r in children} == {"val/bpc"}
    exp = tracker.client.get_experiment(parent.info.experiment_id)
    view = json.loads(exp.tags[SHARE_TAG])
    assert view["orderByKey"] == "metrics.`val/bpc`" and view["orderByAsc"] is True
    assert view["selectedColumns"][:2] == ["metrics.`val/bpc`", "metrics.`best/val/bpc`"]
    assert {"params.`cms.periods.medium`", "params.`train.seed`"} <= set(view["selectedColumns"])
    assert f"viewStateShareKey={SHARE_KEY}" in out and "compare the 4 trial runs that rep" in out


@pytest.mark.slow
def test_optuna_sweep_with_a_failing_trial(tmp_path, write_spec, capsys):
    """Seeded Optuna search; a trial that raises is FAILED with its error, the rest finish.

    Optuna's random sampler draws the same sequence whatever order trials finish in, so
    seed 2 always yields exactly one trial that asks for a GPU the trial was not given (a
    seq_len too long for the corpus, the failure this test used before, is now refused
    before the sweep starts).
    """
    text = spec_text({
        "space": {"optim.lr": {"loguniform": [1e-3, 1e-2]},
                  "train.device": {"choice": ["cpu", "cuda"]}},
        "search": {"algorithm": "optuna", "sampler": "random", "num_samples": 4, "seed": 2},
    })  # fmt: skip
    rc, tracker = run_cli(tmp_path, write_spec(text))
    out = capsys.readouterr().out
    parents, children = split_runs(tracker, "tiny")
    assert len(parents) == 1 and len(children) == 4
    assert parents[0].data.params["search.sampler"] == "random"
    failed = [r for r in children if r.data.params["train.device"] == "cuda"]
    good = [r for r in children if r.data.params["train.device"] == "cpu"]
    assert (len(failed), len(good)) == (1, 3)
    for r in children:
        assert 1e-3 <= float(r.data.params["optim.lr"]) <= 1e-2
    for r in failed:
        assert r.info.status == "FAILED"
        assert "train.device is cuda but Ray assigned this trial no GPU" in r.data.tags[TAG_ERROR]
    for r in good:
        assert r.info.status == "FINISHED" and "val/bpc" in r.data.metrics
    assert rc == 1
    assert "1 trial(s) failed" in out
    assert "best trial:" in out


@pytest.mark.slow
def test_asha_stops_a_hopeless_trial(tmp_path, write_spec, capsys):
    """One trial at a time, the hopeless one last: ASHA must stop it at its first rung."""
    text = spec_text({
        "space": {"optim.lr": {"grid": [1e-2, 3e-3, 1e-9]}},
        "base/train/steps": 12, "base/train/eval_every": 3, "max_concurrent": 1,
        "scheduler": {"kind": "asha", "grace_period": 1, "reduction_factor": 2},
    })  # fmt: skip
    rc, tracker = run_cli(tmp_path, write_spec(text))
    out = capsys.readouterr().out
    assert rc == 0, out
    _, children = split_runs(tracker, "tiny")
    by_lr = {float(r.data.params["optim.lr"]): r for r in children}
    hopeless = by_lr[1e-9]
    assert hopeless.data.tags[TAG_STOPPED] == "asha"
    steps = [m.step for m in tracker.history(hopeless.info.run_id, "val/bpc")]
    assert steps and steps[-1] < 12
    assert TAG_STOPPED not in by_lr[1e-2].data.tags
    assert [m.step for m in tracker.history(by_lr[1e-2].info.run_id, "val/bpc")] == [3, 6, 9, 12]
    assert "STOPPED" in out


@pytest.mark.slow
def test_a_diverging_trial_stops_and_the_sweep_goes_on(tmp_path, write_spec, capsys):
    text = spec_text({
        "space": {"optim.lr": {"grid": [0.1, 1e6]}},
        "base/optim": {"kind": "sgd", "lr": 0.1}, "base/train/diverge_above": 20.0,
    })  # fmt: skip
    rc, tracker = run_cli(tmp_path, write_spec(text))
    out = capsys.readouterr().out
    assert rc == 0, out
    _, children = split_runs(tracker, "tiny")
    runs = {float(r.data.params["optim.lr"]): r for r in children}
    bad, good = runs[1e6], runs[0.1]
    assert bad.info.status == "FAILED" and "at step" in bad.data.tags[TAG_DIVERGED]
    assert "val/bpc" not in bad.data.metrics  # no +-inf in the metric history
    assert good.info.status == "FINISHED" and TAG_DIVERGED not in good.data.tags
    assert "DIVERGED" in out and "1 trial(s) diverged" in out
    assert "(lr=0.1)" in out.split("\nbest trial:")[1].splitlines()[0]
    report = (tmp_path / "reports" / "tiny.md").read_text()
    assert "**Diverged**" in report


def test_unreachable_tracking_server_fails_first(tmp_path, write_spec, capsys):
    rc = main(
        [
            "run",
            str(write_spec()),
            "--tracking-uri",
            "http://127.0.0.1:9",
            "--storage",
            str(tmp_path / "ray"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("tracking_uri http://127.0.0.1:9: unreachable") and "\n" not in err
    assert not (tmp_path / "ray").exists()


def test_unwritable_storage_fails_first(tmp_path, write_spec, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    rc = main(
        [
            "run",
            str(write_spec()),
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'm.db'}",
            "--storage",
            str(blocker / "sub"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and ": storage: a writable folder" in err and "\n" not in err


def test_missing_corpus_fails_before_ray(tmp_path, write_spec, capsys, monkeypatch):
    import urllib.request

    monkeypatch.setenv("NLSWEEP_DATA", str(tmp_path / "none"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(
        urllib.request, "urlopen", lambda *a, **k: (_ for _ in ()).throw(OSError("offline"))
    )
    spec = write_spec(edit("corpus: pydoc", "corpus: tinyshakespeare"))  # its line: 9
    rc, _ = run_cli(tmp_path, spec)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and f"{spec}:9: base.data: corpus tinyshakespeare: not found" in err
    assert not (tmp_path / "ray" / "tiny").exists()


def test_dry_run_starts_nothing(tmp_path, write_spec, capsys):
    rc = main(
        [
            "run",
            str(write_spec()),
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--storage",
            str(tmp_path / "ray"),
            "--dry-run",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "4 trials" in out and "2 at a time" in out and "nothing was started" in out
    assert "cost: no estimate: no earlier finished trials of these sizes" in out
    assert (
        len([ln for ln in out.splitlines() if ln.strip().startswith(("0 ", "1 ", "2 ", "3 "))]) == 4
    )
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray").exists()
