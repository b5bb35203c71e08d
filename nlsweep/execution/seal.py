"""What `--resume` trusts: only experiment files whose digest this sweep recorded.

Ray Tune keeps its experiment state as pickles (`tuner.pkl`, the searcher's and callbacks'
state) and as JSON with pickled fields (`experiment_state-*.json`), and unpickles them on
`Tuner.restore`. Unpickling runs code, so anyone who can write the storage (a shared folder,
a bucket) could run code as the user who resumes. A sweep therefore records the sha256 of
every file at the top of its experiment folder as Tune writes it, in places the storage's
writers cannot change:

- the MLflow parent run's tags `nlsweep.seal.FILE` (the tracking store, not the storage),
- a file in this user's state folder on the machine where Tune runs
  (`$NLSWEEP_STATE`, else `$XDG_STATE_HOME/nlsweep`, else `~/.local/state/nlsweep`), which
  also covers a sweep that stopped while the tracking store was away.

The digests are taken from the driver's staging copy when Tune saves its state, before Tune
uploads it (`SealedVariants`/`SealedSearch` in `nlsweep/execution/sweep.py`), so a driver killed at
any moment leaves nothing in storage that was not recorded first. Before anything of an
earlier run is read, every file at the top of the folder must match one of the last
`KEEP` versions recorded under its name; nlsweep's own files there are JSON, read as data.
Trial checkpoints are loaded with `torch.load(weights_only=True)` and need no seal.

Tune's upload of a file is not atomic: a driver killed while it copies one leaves that file
cut short in storage. The local record therefore keeps the recorded versions' contents too
(`seals/<experiment>/<sha256>`), and a file that is the beginning of one of them is written
back whole (said on the console), never loaded as it is. On another machine, or with the
state folder gone, such a file is refused like any other.
What this cannot stop: a writer who changes a file between this check and Ray's read of it
(seconds), and a store whose tracking database the same writer controls.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path

from nlsweep.execution.experiment import (
    MARKER,
    PENDING,
    TUNER_FILE,
    ExperimentError,
    filesystem,
    read_bytes,
)

TAG_PREFIX = "nlsweep.seal."
KEEP = 3
"""Versions kept per file name: the storage may still hold an older one than the newest
recorded (an upload that never finished)."""
NOT_SEALED = (MARKER, PENDING, ".validate_storage_marker")
"""nlsweep's own JSON (parsed as data) and Ray's empty write-test file."""
TAG_RETRY_S = 60.0


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def state_dir() -> Path:
    """This user's nlsweep state folder (seals, local Ray records)."""
    if os.environ.get("NLSWEEP_STATE"):
        return Path(os.environ["NLSWEEP_STATE"])
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "nlsweep"


def local_record_path(experiment: str) -> Path:
    return state_dir() / "seals" / f"{digest(experiment.encode())[:32]}.json"


def kept_dir(experiment: str) -> Path:
    """The contents of the recorded versions, one file per sha256."""
    return local_record_path(experiment).with_suffix("")


def read_local(experiment: str) -> dict[str, list[str]]:
    try:
        raw = json.loads(local_record_path(experiment).read_text())
    except (OSError, ValueError):
        return {}
    return {k: [d for d in v if isinstance(d, str)] for k, v in raw.items() if isinstance(v, list)}


def read_tags(tags: dict[str, str]) -> dict[str, list[str]]:
    out = {}
    for key, value in tags.items():
        if key.startswith(TAG_PREFIX):
            with contextlib.suppress(ValueError):
                out[key[len(TAG_PREFIX) :]] = [d for d in json.loads(value) if isinstance(d, str)]
    return out


def top_files(experiment: str) -> dict[str, bytes]:
    """The contents of the files at the top of the experiment folder (subfolders: trials)."""
    import pyarrow.fs

    fs, root = filesystem(experiment)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=False))
    out = {}
    for info in infos:
        if info.type == pyarrow.fs.FileType.File and info.base_name not in NOT_SEALED:
            with fs.open_input_stream(info.path) as f:
                out[info.base_name] = f.read()
    return out


def whole_version(experiment: str, name: str, data: bytes) -> bytes | None:
    """The newest version of `name` kept on this machine that `data` is the beginning of
    (an upload cut short), or None."""
    for d in read_local(experiment).get(name, []):
        try:
            kept = (kept_dir(experiment) / d).read_bytes()
        except OSError:
            continue
        if len(data) < len(kept) and kept.startswith(data) and digest(kept) == d:
            return kept
    return None


def verify(experiment: str, tracker, parent_id: str, unread: tuple[str, ...] = ()) -> list[str]:
    """Raise ExperimentError (one line) unless every file Ray would deserialise at the top
    of `experiment` is a version this sweep recorded; `unread`: files the resume will not
    load (it writes them anew), left unchecked. A file cut short whose whole version this
    machine kept is written back whole first; returns the names of those files."""
    try:
        files = {k: v for k, v in top_files(experiment).items() if k not in unread}
    except OSError as e:
        raise ExperimentError(f"{experiment}: unreadable ({e})") from None
    known = read_local(experiment)
    try:
        for name, digests in read_tags(tracker.tags(parent_id)).items():
            known[name] = known.get(name, []) + digests
    except Exception:  # noqa: BLE001 - the local record may still vouch for every file
        pass
    if not known:
        raise ExperimentError(
            f"{experiment}: no digests of its files were recorded (a sweep from before "
            "nlsweep recorded them, or from another machine); resume runs no code from "
            "storage it cannot vouch for: use --restart"
        )
    restored = []
    for name, data in sorted(files.items()):
        if digest(data) in known.get(name, []):
            continue
        whole = whole_version(experiment, name, data) if name in known else None
        if whole is not None:
            fs, root = filesystem(f"{experiment.rstrip('/')}/{name}")
            with fs.open_output_stream(root) as f:  # cut short again: mended again
                f.write(whole)
            restored.append(name)
        else:
            what = "truncated or replaced" if name in known else "not written by this sweep"
            raise ExperimentError(
                f"{experiment}/{name}: {what} (sha256 {digest(data)[:12]}... matches no "
                f"version recorded in MLflow run {parent_id[:8]} or {state_dir()}); resume "
                "runs no code from storage it cannot vouch for: restore the file, or --restart"
            )
    return restored


class Seal:
    """Records the digests of an experiment's top-level files as Tune writes them."""

    def __init__(self, tracking_uri: str, parent_id: str, experiment: str):
        self.tracking_uri, self.parent_id, self.experiment = tracking_uri, parent_id, experiment
        self._record: dict[str, list[str]] | None = None
        self._tags_due: set[str] = set()
        self._tuner_seen = False
        self._next_tag_try = 0.0

    def __getstate__(self):  # settings only: it is pickled with the search algorithm
        return {k: self.__dict__[k] for k in ("tracking_uri", "parent_id", "experiment")}

    def __setstate__(self, state):
        self.__init__(**state)

    def _load(self) -> dict[str, list[str]]:
        if self._record is None:
            self._record = read_local(self.experiment)
        return self._record

    def add(self, files: dict[str, bytes]) -> None:
        """Record these contents (file name -> bytes) as versions this sweep wrote."""
        record = self._load()
        kept = kept_dir(self.experiment)
        kept.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            d = digest(data)
            old = record.get(name, [])
            if not (kept / d).exists():  # before the record names it
                tmp = kept / f"{d}.{os.getpid()}.part"
                tmp.write_bytes(data)
                tmp.replace(kept / d)
            if not old or old[0] != d:
                record[name] = [d, *[x for x in old if x != d]][:KEEP]
                self._tags_due.add(name)
        path = local_record_path(self.experiment)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
        tmp.write_text(json.dumps(record))
        tmp.replace(path)  # synchronous and local: recorded before Tune uploads the files
        named = {d for digests in record.values() for d in digests}
        for f in kept.iterdir():
            if f.name not in named:  # a version no longer recorded, or a killed write
                with contextlib.suppress(OSError):
                    f.unlink()
        self._write_tags()

    def _write_tags(self) -> None:
        """Copy the changed entries to the parent run (a resume from another machine reads
        them there); while the store is away this waits, the local record stands."""
        if not self._tags_due or time.monotonic() < self._next_tag_try:
            return
        from nlsweep.tracking.store import Tracker

        try:
            tracker = Tracker(self.tracking_uri)
            tracker.tags_batch(
                self.parent_id,
                {TAG_PREFIX + n: json.dumps(self._record[n]) for n in sorted(self._tags_due)},
            )
            self._tags_due.clear()
        except Exception:  # noqa: BLE001 - retried at the next save
            self._next_tag_try = time.monotonic() + TAG_RETRY_S

    def add_folder(self, folder: str) -> None:
        """Record every top-level file of Tune's local staging folder (just written, not yet
        uploaded), and the experiment's `tuner.pkl` (written once, when the sweep began)."""
        files = {
            p.name: p.read_bytes()
            for p in Path(folder).iterdir()
            if p.is_file() and not p.name.startswith("tmp-") and p.name not in NOT_SEALED
        }
        if not self._tuner_seen:  # once per process: the sweep's own, even where an
            # earlier experiment at the same path (a --restart) recorded another
            with contextlib.suppress(OSError):
                files[TUNER_FILE] = read_bytes(f"{self.experiment.rstrip('/')}/{TUNER_FILE}")
                self._tuner_seen = True
        self.add(files)
