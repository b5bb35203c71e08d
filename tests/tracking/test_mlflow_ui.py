"""The sweep in a real MLflow UI, seen by real headless Chromium (`scripts/mlflow_ui.py`):
the runs link opens the sweep's view (every trial a row, best objective first, the objective
and the best so far as columns), the charts link leads with the objective and draws every
run, and the compare link's parallel-coordinates plot starts on the objective. Skipped where
Chromium or playwright is missing."""

import importlib.util
import json
import shutil

import pytest

from nlsweep.tracking.store import Tracker
from nlsweep.tracking.tags import EXPERIMENT_KIND, MODEL_TRAINING, TAG_ROLE
from nlsweep.tracking.view import SHARE_TAG
from tests.helpers import ROOT
from tests.stores import SPACE, make_store

pytest.importorskip("playwright.sync_api")
if not (shutil.which("chromium") or shutil.which("chromium-browser")):
    pytest.skip("no Chromium (Debian: apt install chromium)", allow_module_level=True)


def _script():
    spec = importlib.util.spec_from_file_location("mlflow_ui", ROOT / "scripts" / "mlflow_ui.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _sweep_store(tmp_path, mode="min"):
    """The synthetic store as the driver leaves it: the experiment's view published (as
    `open_sweep_run` does) and the parent's best so far against trials finished."""
    uri, runs = make_store(tmp_path)
    t = Tracker(uri)
    t.experiment("synthetic")
    t.publish_view("val/bpc", mode, list(SPACE))
    parent = next(r for r in t.runs("synthetic") if r.data.tags.get(TAG_ROLE) == "sweep")
    for finished, best in enumerate([2.50, 2.40, 2.40, 2.40], 1):
        t.log(parent.info.run_id, {"best/val/bpc": best}, finished)
    return uri, runs, t


@pytest.mark.slow
def test_the_first_screens_show_every_trials_objective_and_the_best_so_far(tmp_path):
    uri, runs, t = _sweep_store(tmp_path)
    exp = t.client.get_experiment_by_name("synthetic")
    assert exp.tags[EXPERIMENT_KIND] == MODEL_TRAINING
    ui = _script()
    seen = ui.capture(uri, "synthetic", tmp_path / "ui.png")
    assert sorted(seen["children"]) == sorted(runs.values())
    assert (tmp_path / "ui.png").stat().st_size > 10_000
    assert (tmp_path / "ui-charts.png").stat().st_size > 10_000
    assert "/runs?workflowType=machine_learning&viewStateShareKey=" in seen["link"]


@pytest.mark.slow
def test_the_check_fails_on_a_view_sorted_the_wrong_way(tmp_path):
    """The check can fail: a view that sorts the objective worst first is refused."""
    uri, _, t = _sweep_store(tmp_path, mode="max")  # the store's objective is minimised
    view = json.loads(t.client.get_experiment_by_name("synthetic").tags[SHARE_TAG])
    assert view["orderByAsc"] is False
    ui = _script()
    with pytest.raises(ui.UiError, match="not ordered by val/bpc, best first"):
        ui.capture(uri, "synthetic", tmp_path / "ui.png")
