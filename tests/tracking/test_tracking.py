"""The driver-side MLflow writer, driven by stand-in trials (no Ray needed)."""

from dataclasses import dataclass, field

import pytest

from nlsweep.execution.runlog import RunLogger, close_open_runs
from nlsweep.spec import load_spec
from nlsweep.tracking.store import Tracker, TrackingError
from nlsweep.tracking.tags import PARENT_TAG, TAG_ERROR, TAG_STOPPED, TAG_TRIAL
from nlsweep.tracking.view import ui_command
from tests.helpers import GOOD_SPEC, tmpfs


@dataclass
class FakeTrial:
    trial_id: str
    config: dict
    error_file: str | None = None
    extra: dict = field(default_factory=dict)


@pytest.fixture
def setup(tmp_path, write_spec):
    spec = load_spec(write_spec(GOOD_SPEC), available={"CPU": 2.0, "GPU": 0.0})
    tracker = Tracker(f"sqlite:///{tmp_path / 'm.db'}")
    tracker.check()
    tracker.experiment(spec.name)
    parent = tracker.start_run("sweep", {"a": 1}, {"nlsweep.role": "sweep"})
    return (
        spec,
        tracker,
        parent,
        RunLogger(spec_at(spec, tracker), parent, {"k": "v"}, str(tmp_path / "exp")),
    )


def spec_at(spec, tracker):
    spec.tracking_uri = tracker.uri
    return spec


def result(step, bpc):
    return {"step": step, "val/bpc": bpc, "perf/tokens_per_s": 10.0, "device": "cpu",
            "time_this_iter_s": 0.1, "done": False}  # fmt: skip


def test_callback_lifecycle(setup, tmp_path):
    spec, tracker, parent, log = setup
    done = FakeTrial("t0", {"cms.periods.medium": 2, "train.seed": 0})
    stopped = FakeTrial("t1", {"cms.periods.medium": 1, "train.seed": 1})
    err_file = tmp_path / "error.txt"
    err_file.write_text("Traceback...\n  File x\nValueError: boom\n\n")
    broken = FakeTrial("t2", {"cms.periods.medium": 2, "train.seed": 1}, str(err_file))
    running = FakeTrial("t3", {"cms.periods.medium": 1, "train.seed": 0})
    for t in (done, stopped, broken, running):
        log.trial_started(t.trial_id, t.config)
    log.trial_started(done.trial_id, done.config)  # a restart of the same trial reuses its run
    for step in (4, 8):
        log.trial_result(done.trial_id, result(step, 3.0 / step))
    log.trial_result(stopped.trial_id, result(4, 2.0))
    log.trial_completed(done.trial_id, None)
    log.trial_completed(stopped.trial_id, None)
    log.trial_errored(broken.trial_id, "ValueError: boom")
    log.finish()
    assert close_open_runs(tracker, parent) == 1

    runs = {r.data.tags[TAG_TRIAL]: r for r in tracker.runs(spec.name) if TAG_TRIAL in r.data.tags}
    assert len(runs) == 4
    assert {r.data.tags[PARENT_TAG] for r in runs.values()} == {parent}
    assert runs["t0"].info.run_name == "medium=2 seed=0"
    assert runs["t0"].data.params["train.seed"] == "0" and runs["t0"].data.tags["k"] == "v"
    status = {t: r.info.status for t, r in runs.items()}
    assert status == {"t0": "FINISHED", "t1": "FINISHED", "t2": "FAILED", "t3": "KILLED"}
    hist = tracker.history(runs["t0"].info.run_id, "val/bpc")
    assert [(m.step, m.value) for m in hist] == [(4, 0.75), (8, 0.375)]
    assert set(runs["t0"].data.metrics) == {"val/bpc", "perf/tokens_per_s"}  # Ray's keys dropped
    assert runs["t1"].data.tags[TAG_STOPPED] == "fifo" and TAG_STOPPED not in runs["t0"].data.tags
    assert runs["t2"].data.tags[TAG_ERROR] == "ValueError: boom"


def test_params_beyond_one_batch(setup):
    spec, tracker, parent, _ = setup
    params = {f"p{i}": i for i in range(250)}
    run = tracker.start_run("many", params, {}, parent_id=parent)
    assert len(tracker.client.get_run(run).data.params) == 250


def test_unusable_store_is_one_line(tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("")
    with pytest.raises(TrackingError) as e:
        Tracker(f"sqlite:///{blocker}/sub/m.db").check()
    assert "\n" not in str(e.value) and str(e.value).startswith("tracking_uri sqlite:///")


def test_ui_command_binds_localhost():
    assert ui_command("sqlite:///mlflow.db") == (
        "mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1")  # fmt: skip


def test_logger_pickles_as_settings_and_a_copy_continues_the_same_runs(setup):
    """Tune rebuilds the callback in another process (Ray Client's actor, a resumed sweep):
    the copy carries no client or state, finds the trial's run in MLflow, and logs no step
    twice."""
    import pickle

    spec, tracker, parent, log = setup
    trial = FakeTrial("t0", {"cms.periods.medium": 2, "train.seed": 0})
    log.trial_started(trial.trial_id, trial.config)
    log.trial_result(trial.trial_id, result(4, 1.5))
    blob = pickle.dumps(log)
    assert b"sqlalchemy" not in blob and b"MlflowClient" not in blob
    copy = pickle.loads(blob)
    copy.trial_started(trial.trial_id, trial.config)  # the trial restarts from a checkpoint
    copy.trial_result(trial.trial_id, result(4, 9.9))  # a step its run already holds
    copy.trial_result(trial.trial_id, result(8, 1.0))
    copy.trial_completed(trial.trial_id, None)
    runs = [r for r in tracker.runs(spec.name) if r.data.tags.get(TAG_TRIAL) == "t0"]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["nlsweep.resumed"] == "1"
    hist = tracker.history(runs[0].info.run_id, "val/bpc")
    assert [(m.step, m.value) for m in hist] == [(4, 1.5), (8, 1.0)]


def test_held_back_records_are_written_when_no_trial_is_left_to_run(setup, tmp_path):
    """A sweep that stopped for an outage after its last trial had ended: the resumed sweep
    has no trial to run, and the held-back end of that trial's run still lands (FINISHED,
    not left RUNNING for the driver to mark KILLED)."""
    from nlsweep.execution.experiment import read_pending, write_pending

    spec, tracker, parent, log = setup
    trial = FakeTrial("t0", {"cms.periods.medium": 2, "train.seed": 0})
    log.trial_started(trial.trial_id, trial.config)
    log.trial_result(trial.trial_id, result(4, 1.5))
    write_pending(log.experiment, [{"kind": "log", "trial": "t0", "metrics": {"val/bpc": 1.0},
                                    "step": 8}, {"kind": "end", "trial": "t0",
                                                 "status": "FINISHED"}])  # fmt: skip
    resumed = RunLogger(spec, parent, {"k": "v"}, log.experiment)
    resumed.finish()  # the experiment ends at once: every trial had terminated
    assert close_open_runs(tracker, parent) == 0
    (run,) = [r for r in tracker.runs(spec.name) if r.data.tags.get(TAG_TRIAL) == "t0"]
    assert run.info.status == "FINISHED"
    assert [m.step for m in tracker.history(run.info.run_id, "val/bpc")] == [4, 8]
    assert read_pending(log.experiment) == []


def test_ui_command_quotes_a_path_with_spaces():
    uri = "sqlite:////tmp/my runs/mlflow.db"
    assert ui_command(uri) == f"mlflow ui --backend-store-uri '{uri}' --host 127.0.0.1"


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs made by the test (skipped where mounting is not allowed)."""
    with tmpfs(tmp_path / "disk", "size=4m") as mnt:
        yield mnt


def test_a_full_tracking_disk_stops_at_once_in_one_line(small_disk, tmp_path, write_spec):
    import time

    from nlsweep.execution.runlog import TrackingOutage

    spec = load_spec(write_spec(GOOD_SPEC), available={"CPU": 2.0, "GPU": 0.0})
    tracker = Tracker(f"sqlite:///{small_disk / 'm.db'}")
    tracker.check()
    tracker.experiment(spec.name)
    parent = tracker.start_run("sweep", {"a": 1}, {"nlsweep.role": "sweep"})
    log = RunLogger(spec_at(spec, tracker), parent, {"k": "v"}, str(tmp_path / "exp"))
    trial = FakeTrial("t0", {"cms.periods.medium": 2, "train.seed": 0})
    log.trial_started(trial.trial_id, trial.config)
    log.trial_result(trial.trial_id, result(4, 1.0))
    with open(small_disk / "filler", "wb") as f:  # every byte the disk has left
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    start = time.monotonic()
    with pytest.raises(TrackingOutage) as got:
        for step in range(8, 4000, 4):
            log.trial_result(trial.trial_id, {**result(step, 1.0), "pad": "x" * 4096})
    assert time.monotonic() - start < 30  # at once: not an outage waited out for outage_s
    line = str(got.value)
    assert "\n" not in line and "its disk is full (0.0 MB free in" in line, line
    assert str(small_disk) in line and "free space, then resume" in line


def test_a_damaged_sqlite_store_is_one_line_naming_sqlites_reason(tmp_path):
    db = tmp_path / "m.db"
    tracker = Tracker(f"sqlite:///{db}")
    tracker.check()
    tracker.experiment("x")
    tracker.start_run("sweep", {"a": 1}, {"nlsweep.role": "sweep"})
    Tracker(f"sqlite:///{db}").check()  # sound: passes
    raw = bytearray(db.read_bytes())
    page = 4096
    raw[3 * page : 6 * page] = b"\xa5" * (3 * page)  # a few pages of garbage
    bad = tmp_path / "bad.db"
    bad.write_bytes(bytes(raw))
    with pytest.raises(TrackingError) as got:
        Tracker(f"sqlite:///{bad}").check()
    line = str(got.value)
    assert "\n" not in line and f"{bad} is not a sound MLflow SQLite store (sqlite: " in line
    assert "sqlalche.me" not in line and "Background on this error" not in line
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this was never a database" * 100)
    with pytest.raises(TrackingError, match=r"junk.db is not a sound .*file is not a database"):
        Tracker(f"sqlite:///{junk}").check()


def test_the_parent_run_tracks_the_best_objective_so_far_across_a_resume(setup, tmp_path):
    """`best/val/bpc` on the parent: the best final objective among finished trials, at the
    step of how many have finished; failed, diverged and unfinished trials do not count, and
    a resumed sweep's writer (rebuilt from MLflow) goes on counting."""
    spec, tracker, parent, log = setup
    finals = {"t0": 2.0, "t1": 1.5, "t2": 1.8}
    for i, (tid, bpc) in enumerate(finals.items()):
        log.trial_started(tid, {"cms.periods.medium": 1 + i % 2, "train.seed": i})
        log.trial_result(tid, result(4, bpc + 1.0))
        log.trial_result(tid, result(8, bpc))
        log.trial_completed(tid, None)
    log.trial_started("t3", {"cms.periods.medium": 2, "train.seed": 5})
    log.trial_result("t3", result(4, 0.1))  # better, but not finished: not counted
    log.trial_errored("t3", "ValueError: boom")
    log.finish()
    best = [(m.step, m.value) for m in tracker.history(parent, "best/val/bpc")]
    assert best == [(1, 2.0), (2, 1.5), (3, 1.5)]

    again = RunLogger(spec_at(spec, tracker), parent, {"k": "v"}, str(tmp_path / "exp"))
    again.trial_started("t4", {"cms.periods.medium": 1, "train.seed": 7})
    again.trial_result("t4", result(8, 1.2))
    again.trial_completed("t4", None)
    again.finish()
    best = [(m.step, m.value) for m in tracker.history(parent, "best/val/bpc")]
    assert best[-1] == (4, 1.2)
