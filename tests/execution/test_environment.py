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
