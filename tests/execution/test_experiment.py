"""The experiment folder between runs: marker, resumability checks, archive, resume command."""

import pytest

from nlsweep.cli import resume_command
from nlsweep.execution.experiment import (
    MARKER,
    ExperimentError,
    Marker,
    archive,
    check_resumable,
    experiment_path,
    read_marker,
    refusal,
    restorable,
    write_marker,
)

M = Marker("run123", "sqlite:///m.db", "f" * 64, "/specs/a.yaml")


def test_marker_round_trip_and_restorable(tmp_path):
    path = experiment_path(str(tmp_path), "tiny")
    assert path == str(tmp_path / "tiny")
    assert read_marker(path) is None and not restorable(path)
    write_marker(path, M)
    assert read_marker(path) == M
    assert not restorable(path)  # a marker alone: Tune never saved its state
    (tmp_path / "tiny" / "tuner.pkl").write_bytes(b"x")
    assert restorable(path)
    (tmp_path / "tiny" / MARKER).write_text("{not json")
    with pytest.raises(ExperimentError, match="nlsweep.json: unreadable"):
        read_marker(path)


def test_remote_paths_join_with_slashes():
    assert experiment_path("s3://bucket/sweeps/", "tiny") == "s3://bucket/sweeps/tiny"


@pytest.mark.parametrize(
    "marker, fingerprint, uri, fragment",
    [
        (None, M.fingerprint, M.tracking_uri, "no nlsweep.json"),
        (M, "0" * 64, M.tracking_uri, "changed since this experiment started"),
        (M, M.fingerprint, "sqlite:///other.db", "resume with --tracking-uri sqlite:///m.db"),
    ],
    ids=["no marker", "spec changed", "other store"],
)
def test_resume_refused_with_one_line(marker, fingerprint, uri, fragment):
    with pytest.raises(ExperimentError) as e:
        check_resumable("/x/tiny", marker, fingerprint, uri)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_resume_accepted_for_the_same_spec_and_store():
    check_resumable("/x/tiny", M, M.fingerprint, M.tracking_uri)


def test_refusal_names_both_flags_and_counts():
    msg = str(refusal("/x/tiny", 3, 8))
    assert "3 of 8 trials finished" in msg and "--resume" in msg and "--restart" in msg
    assert "interrupted" in msg
    assert "all finished" in str(refusal("/x/tiny", 8, 8))


def test_archive_moves_never_deletes(tmp_path):
    exp = tmp_path / "tiny"
    exp.mkdir()
    (exp / "keep.txt").write_text("data")
    first = archive(str(exp))
    exp.mkdir()
    second = archive(str(exp))  # same second: a distinct name
    assert first != second and not exp.exists()
    assert (tmp_path / first.split("/")[-1] / "keep.txt").read_text() == "data"
    with pytest.raises(ExperimentError, match="archives local folders only"):
        archive("s3://bucket/tiny")


def test_resume_command_repeats_the_options_with_the_spec_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["run", "--set", "base.train.steps=5", "s.yaml", "--smoke", "--restart"]
    assert resume_command(argv) == (
        f"nlsweep run --set base.train.steps=5 {tmp_path}/s.yaml --smoke --resume"
    )
    assert resume_command(["s y.yaml", "--resume"]) == f"nlsweep run '{tmp_path}/s y.yaml' --resume"


def test_a_new_sweep_of_another_spec_under_a_taken_name_is_refused(
    tmp_path, write_spec, capsys, monkeypatch
):
    from nlsweep.cli import main
    from nlsweep.execution.runlog import open_sweep_run
    from nlsweep.spec import load_spec
    from nlsweep.tracking.store import Tracker
    from tests.helpers import NO_GPU, spec_text

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    first = load_spec(write_spec(spec_text(), "a.yaml"), tracking_uri=uri, available=NO_GPU)
    tracker = Tracker(uri)
    parent, _ = open_sweep_run(tracker, first)  # a sweep of a.yaml was logged as "tiny"
    other = write_spec(spec_text({"base/train/steps": 12}), "b.yaml")  # same name, other spec
    args = ["--tracking-uri", uri, "--storage", str(tmp_path / "elsewhere")]
    assert main(["run", str(other), *args]) == 2
    line = capsys.readouterr().err.strip()
    assert len(line.splitlines()) == 1
    assert "b.yaml: name: 'tiny' is taken in" in line and "a.yaml" in line, line
    assert parent[:8] in line and "expected a new name" in line
    assert not (tmp_path / "elsewhere").exists() and len(tracker.sweep_runs("tiny")) == 1
    # the same spec again (another storage folder) may log there, as may --restart
    from nlsweep.execution.preflight import check_name_free

    check_name_free(first, tracker)
