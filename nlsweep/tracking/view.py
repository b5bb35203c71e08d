"""What the MLflow UI shows first for a sweep, and the links that open it.

MLflow's runs page keeps its layout (columns, which runs the charts draw, chart order) in the
browser's localStorage, which no client can reach. The one layout a client can set is a
*shared view*: a JSON state in the experiment tag `mlflow.sharedViewState.<key>`, opened by
a link that carries `viewStateShareKey=<key>` (the UI's own "Share" button writes the same
tag). nlsweep writes one per experiment when a sweep starts, so the runs link opens on:

- the table sorted by the objective, best first. A sort flattens MLflow's nesting, so every
  trial is a row (a parent run is shown folded and MLflow takes no expanded-runs state from
  a shared view); the objective, the parent's `best/<objective>` and the swept values are
  its first columns;
- the chart view (same link, `compareRunsMode=CHART`) led by the objective's section: its
  line chart and a parallel-coordinates chart of the swept values against it, then the best
  so far against trials finished, then MLflow's own sections; every run drawn, not 10.

MLflow's compare-runs page takes no state at all. Its parallel-coordinates plot starts on
the first metric its runs share, in the order they were first logged, so the trial runs
log the objective first (`objective_first`). Its axes are always linear: docs/usage.md
says what that hides and where to read the values instead.
"""

from __future__ import annotations

import json
import shlex
from urllib.parse import quote

from nlsweep.tracking.tags import LOCAL_UI

SHARE_KEY = "nlsweep"
SHARE_TAG = f"mlflow.sharedViewState.{SHARE_KEY}"
MAX_COLUMNS = 24  # swept values shown as table columns; the rest stay one click away
MAX_AXES = 8  # swept values on the parallel-coordinates chart; more is unreadable
WORKFLOW = "workflowType=machine_learning"  # MLflow 3 otherwise opens on its GenAI pages


def best_key(metric: str) -> str:
    """The parent run's metric: the best final objective against trials finished."""
    return f"best/{metric}"


def objective_first(metrics: dict[str, float], metric: str) -> dict[str, float]:
    """`metrics` with the objective first, the order MLflow keeps them in."""
    if metric not in metrics:
        return metrics
    return {metric: metrics[metric], **{k: v for k, v in metrics.items() if k != metric}}


def _line(uuid: str, section: str, metric: str) -> dict:
    return {
        "uuid": uuid, "type": "LINE", "metricSectionId": section, "metricKey": metric,
        "displayName": metric, "runsCountToCompare": 100, "deleted": False,
        "isGenerated": True, "xAxisKey": "step", "scaleType": "linear",
        "xAxisScaleType": "linear", "lineSmoothness": 0, "useGlobalXaxisKey": True,
        "useGlobalLineSmoothing": True, "yAxisKey": "metric", "yAxisExpressions": [],
        "range": {}, "selectedXAxisMetricKey": "",
    }  # fmt: skip


def view_state(metric: str, mode: str, swept: list[str]) -> dict:
    """The shared view's state, in the fields MLflow's runs page reads from it."""
    best = best_key(metric)
    sections = []
    # Sections of their own: MLflow files every chart it adds under the section named by
    # the metric's prefix, and within one section new charts come before the ones set here.
    names = (f"objective: {metric}", f"best {metric} so far")
    for uuid, name in zip(("nlsweep-objective", "nlsweep-best"), names):
        sections.append({"uuid": uuid, "name": name, "display": True, "isReordered": False,
                         "deleted": False, "isGenerated": True})  # fmt: skip
    parallel = {
        "uuid": "nlsweep-parallel", "type": "PARALLEL", "metricSectionId": "nlsweep-objective",
        "selectedParams": swept[:MAX_AXES], "selectedMetrics": [metric], "showAllRuns": True,
        "runsCountToCompare": 100, "deleted": False, "isGenerated": True,
    }  # fmt: skip
    charts = [_line("nlsweep-objective-line", "nlsweep-objective", metric)]
    if swept:
        charts.append(parallel)
    charts.append(_line("nlsweep-best-line", "nlsweep-best", best))
    columns = [f"metrics.`{metric}`", f"metrics.`{best}`"]
    return {
        "orderByKey": columns[0],
        "orderByAsc": mode == "min",
        "selectedColumns": columns + [f"params.`{p}`" for p in swept[:MAX_COLUMNS]],
        "runsHiddenMode": "SHOW_ALL",
        "isAccordionReordered": True,  # MLflow appends its own sections after these
        "compareRunSections": sections,
        "compareRunCharts": charts,
    }


def view_tag(metric: str, mode: str, swept: list[str]) -> tuple[str, str]:
    """(experiment tag key, value) that holds the sweep's view."""
    return SHARE_TAG, json.dumps(view_state(metric, mode, swept), separators=(",", ":"))


def _base(uri: str) -> str:
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI


def ui_links(uri: str, experiment_id: str, run_ids: list[str]) -> tuple[str, str, str]:
    """Links to the experiment's runs table and its charts, both in the sweep's view, and to
    MLflow's compare page of `run_ids`: on the tracking server itself, else on what
    `ui_command` serves (127.0.0.1:5000)."""
    base = _base(uri)
    runs = f"{base}/#/experiments/{experiment_id}/runs?{WORKFLOW}&viewStateShareKey={SHARE_KEY}"
    ids = quote(json.dumps(run_ids, separators=(",", ":")))
    exp = quote(json.dumps([experiment_id]))
    compare = f"{base}/#/compare-runs?runs={ids}&experiments={exp}&{WORKFLOW}"
    return runs, f"{runs}&compareRunsMode=CHART", compare


def ui_command(uri: str) -> str:
    """The exact command that shows this store in the MLflow UI (bound to localhost)."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser (the tracking server's own UI)"
    return shlex.join(["mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1"])


def run_link(uri: str, experiment_id: str, run_id: str) -> str:
    """A browser link for servers; for local stores the run id is what the UI searches by."""
    if uri.startswith(("http://", "https://")):
        return f"[{run_id[:8]}]({uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id})"
    return f"`{run_id[:8]}`"
