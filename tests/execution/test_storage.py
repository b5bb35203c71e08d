"""Where a sweep may keep its experiment: the probe write and the shared-storage rule."""

import pytest

from nlsweep.execution.preflight import check_shared_storage, check_storage, filesystem_type
from nlsweep.spec import SpecError, load_spec

MOUNTS = """\
/dev/sda1 / ext4 rw 0 0
nfs-server:/export /mnt/shared nfs4 rw 0 0
s3fs /mnt/bucket fuse.s3fs rw 0 0
tmpfs /mnt/shared/scratch tmpfs rw 0 0
"""


@pytest.mark.parametrize(
    "path, kind",
    [
        ("/home/me/ray_results", "ext4"),
        ("/mnt/shared/sweeps", "nfs4"),
        ("/mnt/shared", "nfs4"),
        ("/mnt/sharedx/sweeps", "ext4"),  # a prefix of the name is not the mount
        ("/mnt/shared/scratch/x", "tmpfs"),  # the longest mount point wins
        ("/mnt/bucket/sweeps", "fuse.s3fs"),
    ],
)
def test_filesystem_type_of_a_path(tmp_path, path, kind):
    mounts = tmp_path / "mounts"
    mounts.write_text(MOUNTS)
    assert filesystem_type(path, str(mounts)) == kind


@pytest.mark.parametrize(
    "storage, nodes, refused",
    [
        ("/home/me/ray_results", 1, False),
        ("/home/me/ray_results", 2, True),
        ("/mnt/shared/sweeps", 3, False),
        ("/mnt/bucket/sweeps", 3, False),
        ("/mnt/shared/scratch/x", 2, True),
        ("s3://bucket/sweeps", 2, False),
    ],
)
def test_a_cluster_of_several_nodes_needs_shared_storage(
    tmp_path, write_spec, storage, nodes, refused
):
    mounts = tmp_path / "mounts"
    mounts.write_text(MOUNTS)
    spec = load_spec(write_spec(), available={"CPU": 2.0, "GPU": 0.0})
    spec.storage = storage
    if not refused:
        check_shared_storage(spec, nodes, str(mounts))
        return
    with pytest.raises(SpecError) as e:
        check_shared_storage(spec, nodes, str(mounts))
    line = str(e.value)
    assert "\n" not in line and f"{nodes} nodes" in line and "s3://" in line


def test_a_storage_uri_that_takes_no_write_is_one_line(write_spec):
    spec = load_spec(write_spec(), storage="nosuchscheme://bucket/x", available={"CPU": 2.0})
    with pytest.raises(SpecError) as e:
        check_storage(spec)
    line = str(e.value)
    assert "\n" not in line and "storage" in line and "nosuchscheme://bucket/x" in line


@pytest.mark.slow
def test_a_full_storage_disk_stops_the_sweep_at_once_and_it_resumes(tmp_path, monkeypatch, capsys):
    """A storage disk that fills up (a tmpfs made by the test, smaller than one checkpoint):
    one line naming the storage and its free space, exit 3 with the resume command, no
    traceback and no trial FAILED; once there is room, --resume completes every trial, each
    step logged once."""
    import subprocess

    from nlsweep.cli import main
    from nlsweep.tracking.store import Tracker
    from nlsweep.tracking.tags import TAG_ROLE
    from tests.helpers import spec_text, tmpfs

    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text({"base/model/d_model": 128, "base/model/d_ff": 256,
                               "space/cms.periods.medium": {"grid": [1]}}))  # fmt: skip
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tmpfs(tmp_path / "disk", "size=2m") as disk:
        args = ["run", str(spec), "--storage", str(disk / "ray"), "--tracking-uri", uri]
        assert main(args) == 3
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err
        line = next(ln for ln in out.splitlines() if ln.startswith("storage "))
        assert line.startswith(f"storage {disk / 'ray'}: its disk is full (")
        assert f"MB free in {disk})" in line and "could not write its checkpoint at step 4" in line
        assert f"resume with: nlsweep run {spec} --storage {disk / 'ray'}" in out
        runs = Tracker(uri).runs("tiny")
        assert not [r for r in runs if r.info.status == "FAILED"]

        subprocess.run(["mount", "-o", "remount,size=256m", str(disk)], check=True)
        assert main([*args, "--resume"]) == 0
        tracker = Tracker(uri)
        trials = [r for r in tracker.runs("tiny") if r.data.tags.get(TAG_ROLE) == "trial"]
        assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)
        for r in trials:
            assert [m.step for m in tracker.history(r.info.run_id, "val/bpc")] == [4, 8]
