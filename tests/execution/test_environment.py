"""The folders a sweep writes outside its storage and tracking store (TMPDIR, Ray's session
folder, nlsweep's seal record, the prepared cache) are checked writable before anything
starts: each read-only one is one line naming it and how to move it, exit 2."""

import pytest

from nlsweep.cli import main
from tests.helpers import spec_text, tmpfs


@pytest.fixture
def read_only(tmp_path):
    """A read-only tmpfs made by the test (root ignores file modes; a mount's ro it does not)."""
    with tmpfs(tmp_path / "ro", "ro,size=1m") as mnt:
        yield mnt


@pytest.mark.parametrize(
    "env, said",
    [
        ("TMPDIR", "the temporary folder (TMPDIR): make it writable or set TMPDIR"),
        ("RAY_TMPDIR", "Ray's session folder: make it writable or set RAY_TMPDIR"),
        ("NLSWEEP_STATE", "nlsweep's record of sealed experiments"),
        ("NLSWEEP_PREPARED", "the prepared corpora"),
    ],
)
def test_a_read_only_folder_is_one_line_before_anything_starts(
    env, said, read_only, tmp_path, monkeypatch, capsys
):
    import tempfile

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv(env, str(read_only))
    monkeypatch.setattr(tempfile, "tempdir", None)  # TMPDIR is read again
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text())
    assert main(["run", str(spec)]) == 2
    line = capsys.readouterr().err.strip()
    assert len(line.splitlines()) == 1 and f"{read_only}: not writable (" in line, line
    assert said in line, line
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()


@pytest.mark.parametrize(
    "moved, first, said",
    [
        # nothing moved out of HOME: the seal record is the first folder written there
        ((), ".local/state/nlsweep", "nlsweep's record of sealed experiments"),
        # nlsweep's own folders moved: a local Ray would still write its token in ~/.ray
        (("NLSWEEP_STATE", "NLSWEEP_PREPARED"), ".ray", "set RAY_AUTH_TOKEN_PATH to it"),
    ],
)
def test_a_read_only_home_is_one_line_naming_it(
    moved, first, said, read_only, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    unset = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
             "NLSWEEP_STATE", "NLSWEEP_PREPARED", "XDG_STATE_HOME", "XDG_CACHE_HOME")  # fmt: skip
    for var in unset:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(read_only))
    for var in moved:
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text())
    assert main(["run", str(spec)]) == 2
    line = capsys.readouterr().err.strip()
    assert len(line.splitlines()) == 1, line
    assert line.startswith(f"{read_only / first}: not writable ("), line
    assert f"(under HOME, {read_only})" in line and said in line, line
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()
