"""A finished sweep's trial, evaluated from its MLflow run id alone: through the checkpoint its
run's tag names in experiment storage, through the MLflow artifact when storage is gone, and
from lm-eval's own command line (`nlsweep lm-eval --model nlsweep`)."""

import glob
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nlsweep.cli import main
from nlsweep.evaluation import LoadError, evaluate, trial_from_run
from nlsweep.evaluation.adapter import NlsweepLM
from nlsweep.tracking.store import Tracker
from nlsweep.tracking.tags import TAG_CHECKPOINT, TAG_ROLE
from nlsweep.training import checkpoint
from tests.evaluation.test_adapter import MC, write_task
from tests.helpers import ROOT

SPEC = """\
name: evaltiny
description: a sweep whose trials lm-eval reads back
metric: val/loss
mode: min
base:
  model: {kind: transformer, d_model: 16}
  data:  {corpus: pydoc, seq_len: 16, batch_size: 4}
  train: {steps: 12, eval_every: 6, eval_batches: 1, seed: 0, final_eval: sampled}
space:
  train.seed: {grid: [0, 1]}
search: {algorithm: grid}
resources: {cpu: 1, gpu: 0}
max_concurrent: 2
eval:
  tasks: [nlsweep_tiny_mc]
  include_path: [tasks]
  batch_size: 4
  needles: {lengths: [128, 512], samples: 2, candidates: 3, modes: [carry, fresh]}
"""
TASK = "nlsweep_tiny_mc"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalsweep")
    spec = root / "spec.yaml"
    spec.write_text(SPEC)
    (root / "tasks").mkdir()
    write_task(root / "tasks", MC)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        rc = main(["run", str(spec), "--tracking-uri", uri, "--storage", str(root / "ray")])
    assert rc == 0
    tracker = Tracker(uri)
    runs = [r for r in tracker.runs("evaltiny") if r.data.tags.get(TAG_ROLE) == "trial"]
    assert len(runs) == 2
    return root, uri, tracker, runs


@pytest.mark.slow
def test_a_sweep_with_an_eval_section_scores_every_trial(sweep):
    """Every trial run ends with lm-eval's scores of its final model, made inside the trial,
    with the settings they were made under; the report has the evaluation section."""
    root, uri, tracker, runs = sweep
    for r in runs:
        rid = r.info.run_id
        assert {f"eval/{TASK}/acc", f"eval/{TASK}/acc_stderr"} <= set(r.data.metrics)
        assert [m.step for m in tracker.history(rid, f"eval/{TASK}/acc")] == [12]
        settings = json.loads(r.data.tags[f"nlsweep.eval.{TASK}"])
        assert settings["task"] == TASK and settings["limit"] == 0
        # the same score as the finished run's checkpoint gives, loaded by its run id
        metrics, _ = evaluate(NlsweepLM(run=rid, tracking_uri=uri), [TASK],
                              include_path=[root / "tasks"])  # fmt: skip
        assert metrics[f"eval/{TASK}/acc"] == r.data.metrics[f"eval/{TASK}/acc"]
        for n in (128, 512):
            assert r.data.metrics[f"eval/needle_fresh/acc_len{n}"] in (0.0, 0.5, 1.0)
            assert f"eval/needle_fresh/rss_mb_len{n}" in r.data.metrics
        assert json.loads(r.data.tags["nlsweep.eval.needles"])["lengths"] == [128, 512]
        # a transformer keeps no state: its carry mode is skipped, and the run says why
        assert "keeps no state" in r.data.tags["nlsweep.warning.eval_needles_carry"]
        assert not any(k.startswith("eval/needle_carry/") for k in r.data.metrics)
    report = (root / "reports" / "evaltiny.md").read_text()
    assert "## Evaluations (lm-evaluation-harness)" in report
    assert f"### `{TASK}`: acc" in report and "limit all, 0-shot, context truncate" in report
    assert "## Needle in a haystack" in report and "chance is 0.33" in report
    assert "| 128 tokens | 512 tokens | peak MB at 512 |" in report
    assert (root / "reports" / "evaltiny" / "needles.png").stat().st_size > 1000


@pytest.mark.slow
def test_nlsweep_eval_skips_what_was_evaluated_and_resumes(sweep, capsys):
    root, uri, tracker, runs = sweep
    spec = str(root / "spec.yaml")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert main(["eval", spec, "--tracking-uri", uri, "--no-report"]) == 0
        out = capsys.readouterr().out
        assert out.count(f"already evaluated on {TASK}, needles") == 2
        # one run without its tag, as after a kill before it was written: only it is redone
        first = runs[0].info.run_id
        tracker.untag(first, f"nlsweep.eval.{TASK}")
        assert main(["eval", spec, "--tracking-uri", uri, "--no-report"]) == 0
        out = capsys.readouterr().out
        assert out.count("already evaluated") == 1 and f"({first[:8]}): {TASK}/acc " in out
        assert [m.step for m in tracker.history(first, f"eval/{TASK}/acc")] == [12, 12]
        # other settings are another evaluation, for every run; the report is rewritten
        assert main(["eval", "evaltiny", "--tracking-uri", uri, "--tasks", TASK,
                     "--include-path", str(root / "tasks"), "--limit", "3"]) == 0  # fmt: skip
        out = capsys.readouterr().out
        assert "already evaluated" not in out and "report: reports/evaltiny.md" in out
    for r in runs:
        tags = tracker.tags(r.info.run_id)
        assert json.loads(tags[f"nlsweep.eval.{TASK}"])["limit"] == 3


@pytest.mark.slow
def test_an_eval_task_that_cannot_load_stops_the_sweep_before_it_starts(tmp_path, capsys):
    (tmp_path / "tasks").mkdir()
    write_task(tmp_path / "tasks", MC)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for task, why in (("no_such_task_anywhere", "not a task lm-eval knows"),
                      ("nlsweep_broken_mc", "cannot load")):  # fmt: skip
        text = SPEC.replace("tasks: [nlsweep_tiny_mc]", f"tasks: [{task}]")
        spec = tmp_path / "bad.yaml"
        spec.write_text(text)
        if task == "nlsweep_broken_mc":  # a task YAML whose jsonl is not there
            yaml_text = (tmp_path / "tasks" / "tiny_mc.yaml").read_text()
            (tmp_path / "tasks" / "broken.yaml").write_text(
                yaml_text.replace("task: nlsweep_tiny_mc", f"task: {task}")
                .replace("tiny_mc.jsonl", "gone.jsonl"))  # fmt: skip
        for cmd in (
            ["validate", str(spec)],
            ["run", str(spec), "--tracking-uri", uri, "--storage", str(tmp_path / "ray")],
        ):
            assert main(cmd) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "eval.tasks" in err[0] and task in err[0] and why in err[0]
    # no kind of the sweep keeps state: none has a carry mode for the needles
    spec = tmp_path / "carry.yaml"
    spec.write_text(SPEC.replace("modes: [carry, fresh]", "modes: [carry]"))
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert "eval.needles.modes: [fresh]: no model kind of the sweep (transformer) keeps" in err
    spec.write_text(SPEC.replace("tasks: [nlsweep_tiny_mc]", "tasks: [nlsweep_tiny_mc]\n"
                                 "  memorize: {steps: 1}"))  # fmt: skip
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert "eval.memorize.steps: 0: no model kind of the sweep (transformer) declares" in err
    assert not (tmp_path / "ray").exists() and not (tmp_path / "mlflow.db").exists()


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_a_run_id_loads_the_trials_final_checkpoint(sweep):
    root, uri, tracker, runs = sweep
    loaded = {}
    for r in runs:
        where = r.data.tags[TAG_CHECKPOINT]  # written when the trial finished
        state = checkpoint.load(where)
        assert state["step"] == 12
        trial = trial_from_run(r.info.run_id, uri)
        got = weights(trial.model)
        assert got.keys() == state["model"].keys()
        assert all(torch.equal(got[k], state["model"][k]) for k in got)
        assert trial.cfg.train.seed == int(r.data.params["train.seed"])
        loaded[r.info.run_id] = got
    a, b = loaded.values()
    assert any(not torch.equal(a[k], b[k]) for k in a)  # two seeds, two models


@pytest.mark.slow
def test_the_mlflow_artifact_serves_when_storage_is_gone(sweep, tmp_path):
    root, uri, tracker, runs = sweep
    r = runs[0]
    where = r.data.tags[TAG_CHECKPOINT]
    want = checkpoint.load(where)["model"]
    tracker.log_artifacts(r.info.run_id, where, "checkpoint")  # what log_checkpoints: final does
    kept = tmp_path / "kept"
    shutil.move(where, kept)
    try:
        got = weights(trial_from_run(r.info.run_id, uri).model)
        assert all(torch.equal(got[k], want[k]) for k in want)
    finally:
        shutil.move(kept, where)


@pytest.mark.slow
def test_lm_evals_command_line_evaluates_a_run(sweep, tmp_path):
    """`nlsweep lm-eval` is lm-eval's CLI with the nlsweep model: its accuracy on the local
    task equals the in-process evaluation of the same run."""
    root, uri, tracker, runs = sweep
    run_id = runs[0].info.run_id
    task = write_task(tmp_path, MC)
    cmd = [sys.executable, "-m", "nlsweep", "lm-eval", "--model", "nlsweep",
           "--model_args", f"run={run_id},tracking_uri={uri}", "--batch_size", "3",
           "--tasks", task, "--include_path", str(tmp_path),
           "--output_path", str(tmp_path / "out")]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert task in out.stdout and "acc" in out.stdout
    files = glob.glob(str(tmp_path / "out" / "**" / "results_*.json"), recursive=True)
    assert len(files) == 1
    acc = json.loads(Path(files[0]).read_text())["results"][task]["acc,none"]
    lm = NlsweepLM(run=run_id, tracking_uri=uri)
    metrics, _ = evaluate(lm, [task], include_path=[tmp_path])
    assert acc == metrics[f"eval/{task}/acc"]


@pytest.mark.slow
def test_a_run_that_cannot_be_evaluated_is_one_line(sweep, tmp_path):
    root, uri, tracker, runs = sweep
    with pytest.raises(LoadError, match="not in the tracking store"):
        trial_from_run("0" * 32, uri)
    parent = [r for r in tracker.runs("evaltiny") if r.data.tags.get(TAG_ROLE) == "sweep"][0]
    with pytest.raises(LoadError, match="no readable config.json"):
        trial_from_run(parent.info.run_id, uri)
    with pytest.raises(LoadError, match="trainer.pt: missing"):
        trial_from_run(runs[0].info.run_id, uri, checkpoint_path=str(tmp_path))
    task = write_task(tmp_path, MC)
    cmd = [sys.executable, "-m", "nlsweep", "lm-eval", "--model", "nlsweep",
           "--model_args", f"run={'beef' * 8},tracking_uri={uri}", "--tasks", task,
           "--include_path", str(tmp_path)]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("nlsweep lm-eval: run beefbeef") and "not in the tracking store" in last
