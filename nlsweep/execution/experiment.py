"""A sweep's experiment folder (`storage/name`) as nlsweep sees it between runs.

Ray Tune owns the folder's contents (trial folders, checkpoints, `tuner.pkl`, experiment
state); nlsweep adds one small file, `nlsweep.json`, that ties the folder to the MLflow parent
run it logs to and to the fingerprint of the spec it runs, so that `--resume` continues the
same sweep in the same runs, and refuses a changed spec. `--restart` archives the folder
beside itself (`NAME.archived-YYYYmmdd-HHMMSS`; spec names cannot contain a dot, so an
archive never collides with a sweep) instead of deleting anything.

No Ray import here: the sweep runner asks Ray how many trials finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

MARKER = "nlsweep.json"
TUNER_FILE = "tuner.pkl"  # written by Tuner() at the start; what Tuner.restore needs


class ExperimentError(RuntimeError):
    """The experiment folder stops this run; the message is one line and says what to do."""


@dataclass
class Marker:
    parent_run_id: str
    tracking_uri: str
    fingerprint: str
    spec_file: str
    fixed: str = ""
    """JSON of what the fingerprint hashes (`Spec.fixed`); empty in folders made before
    `--extend` existed."""
    trials: str = ""
    """Trials the experiment's current Tune run plans (an extension: its new ones only)."""
    opening: str = ""
    """"1" while an adaptive sweep's next round is being created: until its tuner.pkl is
    recorded, a kill can leave that file half written, so a resume recomputes the round from
    the store instead of loading it."""


def new_marker(spec, parent_run_id: str, trials: int, opening: bool = False) -> Marker:
    """The marker of a sweep (`nlsweep.spec.Spec`) that starts, or grows, now."""
    fixed = json.dumps(spec.fixed, sort_keys=True)
    return Marker(parent_run_id, spec.tracking_uri, spec.fingerprint, spec.path, fixed,
                  str(trials), "1" if opening else "")  # fmt: skip


def experiment_path(storage: str, name: str) -> str:
    """Where Ray Tune keeps the experiment `name` under `storage` (a folder or a URI)."""
    if "://" in storage:
        return f"{storage.rstrip('/')}/{name}"
    return str(Path(storage) / name)


def filesystem(path: str):
    """(pyarrow filesystem, path in it) for a local path or a storage URI."""
    import pyarrow.fs

    if "://" in path:
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), path


def _exists(path: str) -> bool:
    import pyarrow.fs

    fs, p = filesystem(path)
    return fs.get_file_info(p).type != pyarrow.fs.FileType.NotFound


def read_bytes(path: str) -> bytes:
    fs, p = filesystem(path)
    with fs.open_input_stream(p) as f:
        return f.read()


def restorable(path: str) -> bool:
    """Whether an earlier run left an experiment here that Ray can restore."""
    return _exists(f"{path.rstrip('/')}/{TUNER_FILE}")


def write_marker(path: str, marker: Marker) -> None:
    fs, p = filesystem(path)
    fs.create_dir(p, recursive=True)
    with fs.open_output_stream(f"{p.rstrip('/')}/{MARKER}") as f:
        f.write(json.dumps(asdict(marker), indent=1).encode())


def read_marker(path: str) -> Marker | None:
    """The marker of the experiment at `path`, or None when there is none."""
    fs, p = filesystem(path)
    try:
        with fs.open_input_stream(f"{p.rstrip('/')}/{MARKER}") as f:
            raw = json.loads(f.read().decode())
        optional = ("fixed", "trials", "opening")
        return Marker(**{k: str(raw[k] if k not in optional else raw.get(k, ""))
                         for k in Marker.__dataclass_fields__})  # fmt: skip
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ExperimentError(f"{path}/{MARKER}: unreadable ({e}); use --restart") from None


def archive(path: str) -> str:
    """Move the experiment folder aside (never delete); returns where it went."""
    if "://" in path:
        raise ExperimentError(
            f"{path}: --restart archives local folders only; move or delete the remote "
            "experiment yourself, then run again"
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = f"{path}.archived-{stamp}"
    n = 1
    while os.path.exists(target):
        n += 1
        target = f"{path}.archived-{stamp}-{n}"
    try:
        os.rename(path, target)
    except OSError as e:
        raise ExperimentError(f"{path}: cannot archive to {target} ({e.strerror or e})") from None
    return target


def check_resumable(path: str, marker: Marker | None, fingerprint: str, tracking_uri: str):
    """Raise unless the experiment at `path` can be continued under this spec and store."""
    if marker is None:
        raise ExperimentError(
            f"{path}: no {MARKER}, so its MLflow runs are unknown; "
            "use --restart to archive it and start over"
        )
    if marker.fingerprint != fingerprint:
        raise ExperimentError(
            f"{path}: the spec ({marker.spec_file}) or its --set/--smoke options changed since "
            "this experiment started; resume with the same ones, or use --restart"
        )
    if marker.tracking_uri != tracking_uri:
        raise ExperimentError(
            f"{path}: its trials log to {marker.tracking_uri}, not {tracking_uri}; "
            "resume with --tracking-uri " + marker.tracking_uri
        )


def refusal(path: str, finished: int, total: int) -> ExperimentError:
    """The error for a run that neither resumes nor restarts an existing experiment."""
    state = "all finished" if finished >= total else "interrupted"
    return ExperimentError(
        f"{path}: an earlier run of this sweep exists ({state}: {finished} of {total} trials "
        "finished); pass --resume to continue it, or --restart to archive it and start over"
    )


PENDING = "nlsweep-pending.json"
"""MLflow writes a sweep could not make before the tracking store stayed away too long."""


def write_pending(path: str, ops: list[dict]) -> str:
    """Keep the unwritten tracking operations beside the experiment; returns the file."""
    fs, p = filesystem(path)
    fs.create_dir(p, recursive=True)
    target = f"{p.rstrip('/')}/{PENDING}"
    with fs.open_output_stream(target) as f:
        f.write(json.dumps(ops).encode())
    return f"{path.rstrip('/')}/{PENDING}"


def read_pending(path: str) -> list[dict]:
    """The operations a stopped sweep left unwritten (none: an empty list)."""
    fs, p = filesystem(path)
    try:
        with fs.open_input_stream(f"{p.rstrip('/')}/{PENDING}") as f:
            ops = json.loads(f.read().decode())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise ExperimentError(f"{path}/{PENDING}: unreadable ({e})") from None
    if not isinstance(ops, list) or not all(isinstance(o, dict) for o in ops):
        raise ExperimentError(f"{path}/{PENDING}: not a list of tracking operations")
    return ops


def clear_pending(path: str) -> None:
    fs, p = filesystem(path)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(f"{p.rstrip('/')}/{PENDING}")
