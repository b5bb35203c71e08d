"""Checks a sweep passes before anything starts: the storage folder, the corpora, and what
an earlier run of the same sweep left behind (resume it, archive it, or refuse to run).

Each failure is one line naming the spec key or folder at fault; nothing has been created
or moved when one is raised (an archive is the last step, after every check passed).
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from nlsweep.data import DataError, cached_overlap, load_texts, resolve_files
from nlsweep.experiment import (
    Marker,
    archive,
    check_resumable,
    experiment_path,
    read_marker,
    refusal,
    restorable,
)
from nlsweep.space import grid_points
from nlsweep.spec import Spec, SpecError
from nlsweep.tasks import TASKS

SHARED_FS_TYPES = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph",
                   "glusterfs", "ocfs2", "gfs2", "panfs", "wekafs", "fuse.")  # fmt: skip
"""Filesystems that several machines mount (fuse.*: s3fs, gcsfuse, juicefs, sshfs, ...)."""
PROBE_TIMEOUT_S = 60


def _store_error(spec: Spec, e: BaseException) -> SpecError:
    text = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    why = (text[0] if text else type(e).__name__)[:300]
    return SpecError.at(spec, "storage", f"a reachable, writable location; {spec.storage}: {why}")


def _probe_uri(uri: str) -> None:
    """Write and delete a small object under `uri` (pyarrow, as Ray's storage layer does)."""
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(uri)
    fs.create_dir(root, recursive=True)
    probe = f"{root.rstrip('/')}/.nlsweep-probe-{os.getpid()}"
    with fs.open_output_stream(probe) as f:
        f.write(b"nlsweep storage probe")
    fs.delete_file(probe)


def check_storage(spec: Spec) -> None:
    """The storage folder or URI exists (or can be made) and takes a write, now."""
    if "://" in spec.storage:
        failure: list[BaseException] = []

        def probe():
            try:
                _probe_uri(spec.storage)
            except Exception as e:  # noqa: BLE001 - any failure means unusable storage
                failure.append(e)

        # A daemon thread: an endpoint that never answers must not hang the CLI or its exit.
        worker = threading.Thread(target=probe, daemon=True)
        worker.start()
        worker.join(PROBE_TIMEOUT_S)
        if worker.is_alive():
            failure.append(TimeoutError(f"no answer in {PROBE_TIMEOUT_S} s"))
        if failure:
            raise _store_error(spec, failure[0])
        return
    try:
        Path(spec.storage).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=spec.storage):
            pass
    except OSError as e:
        raise SpecError.at(
            spec, "storage", f"a writable folder; {spec.storage}: {e.strerror or e}"
        ) from None


def filesystem_type(path: str, mounts: str = "/proc/mounts") -> str:
    """The type of the filesystem holding `path` (longest matching mount point)."""
    target = os.path.realpath(path)
    best, kind = "", "unknown"
    try:
        with open(mounts) as f:
            rows = [ln.split() for ln in f]
    except OSError:
        return kind
    for row in rows:
        if len(row) < 3:
            continue
        point = row[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, row[2]
    return kind


def check_shared_storage(spec: Spec, nodes: int, mounts: str = "/proc/mounts") -> None:
    """On a cluster of several nodes, trials move between nodes (a retry, a lost node) and
    every node writes checkpoints: the storage must be one that all of them reach."""
    if nodes <= 1 or "://" in spec.storage:
        return
    kind = filesystem_type(spec.storage, mounts)
    if kind.startswith(SHARED_FS_TYPES):
        return
    raise SpecError.at(
        spec,
        "storage",
        f"storage every node of the cluster reaches; {spec.storage} is on this machine's "
        f"{kind} filesystem and the cluster has {nodes} nodes: use s3://BUCKET/PREFIX "
        "(gs://, abfs:// likewise) or a folder on a shared filesystem (NFS, Lustre, ...)",
    )


def prepare_data(spec: Spec) -> None:
    """Find (or download) every corpus the trials will read, before any trial starts."""
    configs = [spec.base]
    if spec.plan.algorithm == "grid":
        configs += [spec.trial_config(pt) for pt in grid_points(spec.plan.params)]
    seen = set()
    for cfg in configs:
        key = (cfg.data.corpus, cfg.data.path)
        if key not in seen and cfg.data.corpus not in TASKS:  # tasks are generated
            seen.add(key)
            try:
                resolve_files(cfg.data)
                cached_overlap(*load_texts(cfg.data))  # computed once here, not per trial
            except DataError as e:
                raise SpecError.at(spec, "base.data", str(e)) from None


def prepare(
    spec: Spec, resume: bool, restart: bool, trial_counts: Callable, out=print
) -> Marker | None:
    """Run every check; returns the marker of the experiment to resume, or None to start
    a new one (after archiving the old folder with --restart). `trial_counts(spec, path)`
    is Ray's (finished, planned) count of an existing experiment, for the refusal."""
    check_storage(spec)
    path = experiment_path(spec.storage, spec.name)
    marker = None
    if restorable(path):
        if not (resume or restart):
            raise refusal(path, *trial_counts(spec, path))
        if resume:
            marker = read_marker(path)
            check_resumable(path, marker, spec.fingerprint, spec.tracking_uri)
    elif resume:
        out(f"nothing to resume at {path}: starting the sweep")
    prepare_data(spec)
    if restart and restorable(path):
        out(f"archived the earlier experiment to {archive(path)}")
    return marker
