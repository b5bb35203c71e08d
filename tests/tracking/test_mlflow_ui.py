"""The sweep in a real MLflow UI, seen by real headless Chromium (`scripts/mlflow_ui.py`):
the runs link opens the experiment's runs, and its trial runs are listed under the parent.
Skipped where Chromium or playwright is missing."""

import importlib.util
import shutil

import pytest

from nlsweep.tracking.store import Tracker
from nlsweep.tracking.tags import EXPERIMENT_KIND, MODEL_TRAINING
from tests.helpers import ROOT
from tests.stores import make_store

pytest.importorskip("playwright.sync_api")
if not (shutil.which("chromium") or shutil.which("chromium-browser")):
    pytest.skip("no Chromium (Debian: apt install chromium)", allow_module_level=True)


def _script():
    spec = importlib.util.spec_from_file_location("mlflow_ui", ROOT / "scripts" / "mlflow_ui.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_the_ui_lists_the_trial_runs_under_their_parent(tmp_path):
    uri, runs = make_store(tmp_path)
    exp = Tracker(uri).client.get_experiment_by_name("synthetic")
    assert exp.tags[EXPERIMENT_KIND] == MODEL_TRAINING
    ui = _script()
    seen = ui.capture(uri, "synthetic", tmp_path / "ui.png")
    assert sorted(seen["children"]) == sorted(runs.values())
    assert (tmp_path / "ui.png").stat().st_size > 10_000
    assert "/runs?workflowType=machine_learning" in seen["link"]
