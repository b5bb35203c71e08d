"""`--extend`: which trials a grown spec adds (pure), and a grown sweep end to end."""

import copy

import pytest

from models.errors import ConfigError
from nlsweep.cli import main
from nlsweep.config.grow import new_points
from nlsweep.spec import load_spec
from nlsweep.tracking.store import Tracker
from nlsweep.tracking.tags import TAG_RERUN_OF, TAG_ROLE
from tests.helpers import GOOD_SPEC, spec_text

OLD = {
    "name": "s",
    "metric": "val/bpc",
    "mode": "min",
    "base": {"model": {"kind": "nested_lstm", "d_model": 16}, "optim": {"lr": 0.003}},
    "space": {"variant": {"grid": ["a", "b"]}, "train.seed": {"grid": [0, 1]}},
    "variants": {"a": {}, "b": {"optim.lr": 0.01}},
    "search": {"algorithm": "grid"},
    "scheduler": {"kind": "fifo"},
    "resources": {"cpu": 1},
    "max_concurrent": 2,
    "max_failures": 0,
}


def grown(**changes):
    new = copy.deepcopy(OLD)
    for path, value in changes.items():
        *head, last = path.split("/")
        d = new
        for k in head:
            d = d[k]
        d[last] = value
    return new


@pytest.mark.parametrize(
    ("changes", "want"),
    [
        ({"space/train.seed": {"grid": [0, 1, 2]}}, [("a", 2), ("b", 2)]),
        ({"space/train.seed": {"grid": [2, 1, 0]}}, [("a", 2), ("b", 2)]),
        (
            {"space/variant": {"grid": ["a", "b", "c"]}, "variants/c": {"optim.lr": 0.1}},
            [("c", 0), ("c", 1)],
        ),
        (
            {
                "space/variant": {"grid": ["a", "c", "b"]},
                "variants/c": {},
                "space/train.seed": {"grid": [0, 1, 5]},
            },
            [("a", 5), ("c", 0), ("c", 1), ("c", 5), ("b", 5)],
        ),  # fmt: skip
        (
            {"space/train.seed": {"grid": [0, 1, 2]}, "resources": {"cpu": 2}, "max_concurrent": 8},
            [("a", 2), ("b", 2)],
        ),  # fmt: skip
    ],
)
def test_new_points_are_the_grid_points_not_run(changes, want):
    got = new_points(OLD, grown(**changes))
    assert [(p["variant"], p["train.seed"]) for p in got] == want


@pytest.mark.parametrize(
    ("changes", "key", "said"),
    [
        ({"base/model": {"kind": "nested_lstm", "d_model": 32}}, "base.model.d_model", "was 16"),
        ({"metric": "val/loss"}, "metric", "was 'val/bpc', now 'val/loss'"),
        ({"mode": "max"}, "mode", "now 'max'"),
        ({"variants/b": {"optim.lr": 0.02}}, "variants.b.optim.lr", "was 0.01, now 0.02"),
        ({"space/train.seed": {"grid": [0, 2]}}, "space.train.seed", "missing [1]"),
        ({"space/lr": {"grid": [1]}}, "space", "a new factor changes every trial"),
        ({"space/train.seed": {"choice": [0, 1, 2]}}, "space.train.seed", "a grid"),
        ({"space/train.seed": {"grid": [1, 0]}}, "space", "nothing to extend"),
        ({"max_failures": 2}, "max_failures", "was 0, now 2"),
        ({"search": {"algorithm": "optuna"}}, "search.algorithm", "grid to extend"),
    ],
)
def test_any_other_change_is_refused_naming_it(changes, key, said):
    with pytest.raises(ConfigError) as e:
        new_points(OLD, grown(**changes))
    assert e.value.key == key and said in e.value.expected


def run(tmp_path, spec, *extra):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return main(["run", str(spec), "--tracking-uri", uri, "--storage", str(tmp_path / "ray"),
                 *extra]), uri  # fmt: skip


@pytest.mark.slow
def test_a_two_seed_sweep_grows_to_three_seeds_then_a_row_reruns(
    tmp_path, write_spec, capsys, monkeypatch
):
    """One new trial per configuration runs, under the same parent run, and the report's n
    becomes 3; a change to base is refused in one line (exit 2) before anything starts. Then
    `nlsweep rerun SPEC R2` repeats the row's three trials through Ray and MLflow, with the
    recorded config although the spec was edited since, and each reproduces bit for bit."""
    monkeypatch.chdir(tmp_path)
    spec = write_spec()
    rc, uri = run(tmp_path, spec)
    assert rc == 0, capsys.readouterr().out
    first = Tracker(uri).runs("tiny")
    parent = [r for r in first if r.data.tags.get(TAG_ROLE) == "sweep"][0].info.run_id

    spec.write_text(GOOD_SPEC.replace("seed: 0}", "seed: 0, steps: 12}"))
    rc, _ = run(tmp_path, spec, "--extend")
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (after the first run's Ray logs)
    assert rc == 2 and err.startswith(f"{spec}:10: base.train.steps: ") and "was 8" in err

    spec.write_text(spec_text({"space/train.seed": {"grid": [0, 1, 2]}}))
    assert load_spec(spec).plan.trials == 6
    rc, _ = run(tmp_path, spec, "--extend")
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "extending" in out and "by 2 trials" in out
    runs = Tracker(uri).runs("tiny")
    parents = [r for r in runs if r.data.tags.get(TAG_ROLE) == "sweep"]
    children = [r for r in runs if r.data.tags.get(TAG_ROLE) == "trial"]
    assert [p.info.run_id for p in parents] == [parent]
    assert len(children) == 6 and all(r.info.status == "FINISHED" for r in children)
    seeds = sorted((r.data.params["cms.periods.medium"], r.data.params["train.seed"])
                   for r in children)  # fmt: skip
    assert seeds == [(m, s) for m in ("1", "2") for s in ("0", "1", "2")]
    old_ids = {r.info.run_id for r in first if r.data.tags.get(TAG_ROLE) == "trial"}
    assert old_ids < {r.info.run_id for r in children}  # the first four were not run again
    report = (tmp_path / "reports" / "tiny.md").read_text().replace("**", "")
    assert "| R1 | 1 | 3 |" in report and "| R2 | 2 | 3 |" in report

    rc, _ = run(tmp_path, spec, "--dry-run")  # the cost, from these six trials' times
    out = capsys.readouterr().out
    assert rc == 0 and "for 6 of 6 trials" in out
    assert "6 from earlier finished trials of the same model and data sizes" in out

    rc, _ = run(tmp_path, spec, "--extend")  # nothing new left to run
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and err.startswith(f"{spec}:") and "nothing to extend" in err

    command = "`nlsweep rerun spec.yaml R2`"  # from tmp_path, where its store is the default
    assert command in (tmp_path / "reports" / "tiny.md").read_text()
    spec.write_text(spec.read_text().replace("steps: 8", "steps: 12"))  # edited since
    rc = main(["rerun", str(spec), "R2", "--tracking-uri", uri, "--storage", str(tmp_path / "ray")])
    out = capsys.readouterr().out
    assert rc == 0, out
    r2 = sorted(r.info.run_id for r in children if r.data.params["cms.periods.medium"] == "2")
    verdicts = [line for line in out.splitlines() if line.startswith("rerun of ")]
    assert len(verdicts) == 3 and all("reproduced: " in line for line in verdicts), out
    again = [r for r in Tracker(uri).runs("tiny") if TAG_RERUN_OF in r.data.tags]
    assert sorted(r.data.tags[TAG_RERUN_OF] for r in again) == r2
    assert all(r.data.tags["mlflow.parentRunId"] == parent for r in again)
    assert all(r.data.params["train.steps"] == "8" for r in again)
    assert main(["report", "tiny", "--tracking-uri", uri]) == 0  # re-runs stay out of the pool
    report = (tmp_path / "reports" / "tiny.md").read_text().replace("**", "")
    assert "| R1 | 1 | 3 |" in report and "| R2 | 2 | 3 |" in report
