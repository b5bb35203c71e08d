"""`--dry-run --probe` and the resource rules of multi-worker trials (no Ray starts here)."""

import os

import pytest
import yaml

from nlsweep.cli import main
from nlsweep.execution.probe import largest_trial
from nlsweep.spec import load_spec
from tests.helpers import spec_text

WIDE = spec_text({"space/model.d_model": {"grid": [16, 48, 32]}})


def test_largest_trial_is_the_widest_model(write_spec):
    values, cfg = largest_trial(load_spec(write_spec(WIDE)))
    assert values["model.d_model"] == 48 and cfg.model.d_model == 48


def test_probe_measures_the_largest_trial(write_spec, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(write_spec(WIDE)), "--dry-run", "--probe"]) == 0
    out = capsys.readouterr().out
    assert "d_model=48" in out and "estimate only" in out
    assert "ms/step" in out and "peak CPU RSS" in out
    assert "nothing was started" in out and "for 12 of 12 trials" in out
    assert "12 from the probe's step time (an estimate" in out
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()


def test_probe_needs_dry_run(write_spec, capsys):
    assert main(["run", str(write_spec()), "--probe"]) == 2
    assert "--probe: only with --dry-run" in capsys.readouterr().err


@pytest.mark.parametrize(
    "resources, expected",
    [
        ("{cpu: 1, gpu: 2}", "resources.gpu: at most 1 per worker, got 2; for 2 GPUs set "
                              "resources.workers: 2"),
        ("{cpu: 1, workers: 3}",
         "base.data.batch_size: a multiple of resources.workers (3), got 4"),
        ("{cpu: 1, workers: 0}", "resources.workers: a positive integer, got 0"),
        (f"{{cpu: {os.cpu_count()}, workers: 4}}", "resources.workers: at most 1: 4 workers"),
    ],
)  # fmt: skip
def test_bad_worker_resources_are_one_line(write_spec, capsys, resources, expected):
    spec = write_spec(spec_text({"resources": yaml.safe_load(resources)}))
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err


def test_dry_run_counts_workers_in_concurrency(write_spec, capsys):
    spec = write_spec(spec_text({"resources": {"cpu": 1, "workers": 2}}))
    assert main(["run", str(spec), "--dry-run"]) == 0
    out = capsys.readouterr().out
    at_once = max(1, min(2, (os.cpu_count() or 1) // 2))  # max_concurrent 2, 2 CPUs a trial
    assert "2 data-parallel workers x (1 CPU) per trial" in out and f"{at_once} at a time" in out
