"""The read side of tracking: a sweep's parent and trial runs as plain data, for reports and
for reading trials back on any machine that reaches the store."""

from __future__ import annotations

from dataclasses import dataclass, field

from nlsweep.tracking.store import Tracker, TrackingError, _one_line
from nlsweep.tracking.tags import PARENT_TAG, TAG_RERUN_OF, TAG_ROLE


@dataclass
class RunData:
    """One MLflow run as plain data (what reports need, nothing MLflow-specific)."""

    run_id: str
    name: str
    status: str
    start_ms: int
    end_ms: int | None
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]
    """Latest value of every metric."""
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    """(step, value) series of the keys asked for."""


@dataclass
class SweepData:
    experiment: str
    experiment_id: str
    tracking_uri: str
    parent: RunData
    trials: list[RunData]
    reruns: list[RunData] = field(default_factory=list)
    """Child runs of `nlsweep rerun`, kept apart from the trials the sweep pools."""


def _run_data(client, run, history_keys) -> RunData:
    hist = {}
    for key in history_keys:
        if key in run.data.metrics:
            series = client.get_metric_history(run.info.run_id, key)
            hist[key] = sorted((m.step, m.value) for m in series)
    return RunData(
        run_id=run.info.run_id,
        name=run.info.run_name or run.info.run_id,
        status=run.info.status,
        start_ms=run.info.start_time or 0,
        end_ms=run.info.end_time,
        params=dict(run.data.params),
        tags=dict(run.data.tags),
        metrics=dict(run.data.metrics),
        history=hist,
    )


def read_sweep(
    uri: str, experiment: str, parent_run_id: str | None = None, history_keys=None
) -> SweepData:
    """The newest sweep of `experiment` (or the given parent run) and all its trial runs,
    with the metric histories of `history_keys` (default: the sweep's objective). A store
    that fails is one TrackingError line: unreachable at once, within seconds (`check`)."""
    tracker = Tracker(uri)
    tracker.check()
    try:
        return _read_sweep(tracker, experiment, parent_run_id, history_keys)
    except TrackingError:
        raise
    except Exception as e:  # noqa: BLE001 - the server went away mid-read, or a bad run id
        why = _one_line(e)
        raise TrackingError(f"tracking_uri {uri}: reading the sweep failed ({why})") from None


def _read_sweep(tracker: Tracker, experiment: str, parent_run_id, history_keys) -> SweepData:
    uri, client = tracker.uri, tracker.client
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise TrackingError(f"tracking_uri {uri}: no experiment named {experiment!r}")
    if parent_run_id:
        parent = client.get_run(parent_run_id)
    else:
        found = client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`{TAG_ROLE}` = 'sweep'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not found:
            raise TrackingError(f"tracking_uri {uri}: experiment {experiment!r} has no sweep run")
        parent = found[0]
    if history_keys is None:
        history_keys = (parent.data.params.get("metric", "val/bpc"),)
    children = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=10000,
    )
    return SweepData(
        experiment=experiment,
        experiment_id=exp.experiment_id,
        tracking_uri=uri,
        parent=_run_data(client, parent, ()),
        trials=[
            _run_data(client, r, history_keys) for r in children if TAG_RERUN_OF not in r.data.tags
        ],
        reruns=[_run_data(client, r, ()) for r in children if TAG_RERUN_OF in r.data.tags],
    )
