"""Checks a sweep passes before anything starts: the storage folder, the corpora, and what
an earlier run of the same sweep left behind (resume it, archive it, or refuse to run).

Each failure is one line naming the spec key or folder at fault; nothing has been created
or moved when one is raised (an archive is the last step, after every check passed).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from models.capabilities import probe_forward
from models.errors import ConfigError
from models.registry import model_kind
from nlsweep.config.grow import new_points
from nlsweep.data.config import check_fits
from nlsweep.data.corpora import DataError, prepared_root
from nlsweep.data.load import load_corpus
from nlsweep.data.registry import corpus_entry
from nlsweep.execution import seal
from nlsweep.execution.experiment import (
    TUNER_FILE,
    ExperimentError,
    Marker,
    archive,
    check_resumable,
    experiment_path,
    read_marker,
    refusal,
    restorable,
)
from nlsweep.spec import Spec, SpecError, candidate_configs, check_eval, probe_corpora
from nlsweep.tracking.tags import TAG_FINGERPRINT, TAG_SPEC

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
    folder = Path(spec.storage).absolute()
    made = next((p for p in reversed([folder, *folder.parents]) if not p.exists()), None)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
        if made is not None:  # a check leaves nothing behind (the sweep makes it later)
            shutil.rmtree(made, ignore_errors=True)
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


def _writable(folder: Path) -> str | None:
    """None if a file can be made (and removed) in `folder`, made if missing; else why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".nlsweep-probe-"):
            pass
    except OSError as e:
        return e.strerror or type(e).__name__
    return None


def check_environment(spec: Spec, local_ray: bool) -> None:
    """The folders a sweep writes outside its storage and store take a write, or one line
    naming the folder, what writes there and how to move it, before anything starts."""
    folders = [
        # TMPDIR as set (Python would quietly fall back to another folder; Ray would not)
        (
            Path(os.environ.get("TMPDIR") or tempfile.gettempdir()),
            "the temporary folder (TMPDIR)",
            "set TMPDIR to another folder",
        ),  # fmt: skip
        (
            seal.state_dir(),
            "nlsweep's record of sealed experiments",
            "set NLSWEEP_STATE to another folder",
        ),  # fmt: skip
        (
            prepared_root(),
            "the prepared corpora",
            "set NLSWEEP_PREPARED (or XDG_CACHE_HOME) to another folder",
        ),  # fmt: skip
    ]
    if local_ray:  # a cluster's nodes keep their own
        ray_tmp = Path(os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp")
        folders.append((ray_tmp, "Ray's session folder", "set RAY_TMPDIR to another folder"))
        token = ray_token_folder()
        if token is not None:
            folders.append((token, "the authentication token a local Ray generates (Ray's "
                            "token authentication is on by default)", "make a token elsewhere "
                            "(ray get-auth-token --generate, as a user whose home is writable) "
                            "and set RAY_AUTH_TOKEN_PATH to it"))  # fmt: skip
    home = Path.home()
    for folder, what, fix in folders:
        why = _writable(folder)
        if why is not None:
            under = f" (under HOME, {home})" if folder.is_relative_to(home) else ""
            raise ExperimentError(f"{folder}: not writable ({why}){under}; it holds {what}: "
                                  f"make it writable or {fix}")  # fmt: skip


def ray_token_folder() -> Path | None:
    """Where a local Ray writes the token it generates for its token authentication (on
    unless RAY_AUTH_MODE says otherwise): ~/.ray, unless a token is given or already there."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None and mode.lower() != "token":
        return None
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return None
    folder = Path.home() / ".ray"
    return None if (folder / "auth_token").is_file() else folder


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


def prepare_data(spec: Spec, out=None) -> dict[str, bytes]:
    """Find (or download) and prepare every corpus the trials will read, with the subword
    models they use, and check that each trial's batch shape fits its splits, before
    anything starts (one line on failure). Returns the subword models: {file name: bytes};
    `out(line)`, when given, hears each corpus prepared."""
    lengths: dict[tuple, list[tuple[int, int]]] = {}
    models: dict[str, bytes] = {}
    documented: dict[tuple, bool] = {}
    shapes = set()
    probed = set()
    probe_corpora(spec)
    check_eval(spec)
    for cfg in candidate_configs(spec):
        if cfg.model.kind not in probed:  # a plain model's forward, once, on CPU
            probed.add(cfg.model.kind)
            try:
                probe_forward(model_kind(cfg.model.kind), cfg.model)
            except Exception as e:  # noqa: BLE001 - the user's forward: one line
                why = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise SpecError.at(spec, "base.model.kind", why) from None
        d = cfg.data
        if corpus_entry(d.corpus).generated:  # generated to the asked shape
            continue
        # data.phases: every phase's corpus, with one vocabulary of all their training splits
        parts = d.phase_configs() or [d]
        keys = tuple(
            (p.corpus, p.path, p.val_fraction, p.text_field, p.separator, repr(p.options))
            for p in parts
        )
        # Each corpus is prepared here, once, before any trial (`nlsweep/data/prepared.py`):
        # tokenized into the cache that every trial maps, its subword model trained (a
        # vocabulary the text cannot support is one line now) and its leakage measured.
        tok_key = (keys, d.tokenizer, d.vocab_size, d.model_type, d.tokenizer_path)
        try:
            if tok_key not in lengths:
                start = time.perf_counter()
                corpus = load_corpus(d, verify=True, out=out)  # digests: once for all trials
                split = getattr(corpus, "parts", [corpus])
                lengths[tok_key] = [(len(c.train), len(c.val)) for c in split]
                documented[tok_key] = getattr(corpus.vocab, "eod", None) is not None
                for p, c in zip(parts, split):
                    if out is not None:
                        out(f"corpus {p.corpus}{f' ({p.path})' if p.path else ''}: "
                            f"{len(c.train):,} training and {len(c.val):,} held-out tokens "
                            f"({c.vocab.kind}, {len(c.vocab):,} ids) in {c.prepared} "
                            f"[{time.perf_counter() - start:.1f} s]")  # fmt: skip
                if d.tokenizer == "sentencepiece":
                    tok = corpus.vocab
                    what = f"{d.model_type}{d.vocab_size}" if not d.tokenizer_path else "given"
                    name = "+".join(p.corpus for p in parts)
                    models[f"{name}-{what}-{tok.sha256[:12]}.model"] = tok.model
            for key, on in (("state.reset_at", cfg.state.reset_at), ("data.shuffle", d.shuffle)):
                if on and not documented[tok_key]:
                    raise SpecError.at(spec, f"base.{key}", f"unset: corpus {d.corpus} has no "
                                       "documents (no end-of-document id)")  # fmt: skip
            if (tok_key, d.seq_len, d.batch_size) not in shapes:
                shapes.add((tok_key, d.seq_len, d.batch_size))
                for part, n in zip(parts, lengths[tok_key]):
                    check_fits(part, *n)
        except DataError as e:
            raise SpecError.at(spec, "base.data", str(e)) from None
    return models


def trial_counts(spec: Spec, path: str) -> tuple[int, int]:
    """(finished, planned) trials of the experiment at `path`, from Tune's newest experiment
    state read as plain JSON (its pickled fields are never decoded: no code from storage)."""
    import json

    import pyarrow.fs

    from nlsweep.execution.experiment import filesystem, read_bytes

    fs, root = filesystem(path)
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=False))
        states = sorted(i.base_name for i in infos if i.base_name.startswith("experiment_state-"))
        if not states:
            return 0, spec.plan.trials
        state = json.loads(read_bytes(f"{path.rstrip('/')}/{states[-1]}"))
        trials = [json.loads(t[0]) for t in state["trial_data"]]
        finished = sum(t.get("status") == "TERMINATED" for t in trials)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise ExperimentError(
            f"{path}: its experiment state is unreadable ({type(e).__name__}); "
            "pass --restart to archive it and start over"
        ) from None
    return finished, max(spec.plan.trials, len(trials))


def adopt_tracking_uri(spec: Spec, resume: bool, out=print) -> None:
    """On --resume, a spec whose tracking URI was relative (the default sqlite:///mlflow.db)
    logs to the store its sweep started with, whatever folder the resume runs from."""
    path = experiment_path(spec.storage, spec.name)
    if not (resume and spec.tracking_uri_relative and restorable(path)):
        return
    marker = read_marker(path)
    if marker is not None and marker.tracking_uri != spec.tracking_uri:
        out(f"resuming with the tracking store the sweep started with: {marker.tracking_uri}")
        spec.tracking_uri = marker.tracking_uri


def check_store_kept(spec: Spec) -> None:
    """Resuming: a SQLite store that is now a 0-byte file lost the sweep's runs (MLflow would
    take it for a new store and fill it with empty tables); one line before it is touched."""
    path = experiment_path(spec.storage, spec.name)
    uri = spec.tracking_uri
    if not uri.startswith("sqlite:///") or not restorable(path):
        return
    db = Path(uri[len("sqlite:///") :])
    if db.is_file() and db.stat().st_size == 0:
        marker = read_marker(path)
        parent = f" (parent run {marker.parent_run_id})" if marker else ""
        raise ExperimentError(
            f"{path}: its tracking store {db} is empty (0 bytes): it lost the sweep's runs"
            f"{parent}; restore the file from a copy, or --restart to archive the experiment "
            "and start over"
        )


def prepare(
    spec: Spec, resume: bool, restart: bool, tracker, out=print, extend: bool = False
) -> Marker | None:
    """Every check on what an earlier run left: returns the marker of the experiment to
    resume or extend (its files verified against the digests the sweep recorded,
    `nlsweep.execution.seal`), or None to start a new one (after archiving the old folder with
    --restart). Nothing is read from the folder but JSON before that verification."""
    path = experiment_path(spec.storage, spec.name)
    marker = None
    if extend and not restorable(path):
        raise ExperimentError(f"{path}: no sweep to extend there; run it without --extend")
    if restorable(path):
        if not (resume or restart or extend):
            raise refusal(path, *trial_counts(spec, path))
        if resume or extend:
            marker = read_marker(path)
            fingerprint = marker.fingerprint if extend and marker else spec.fingerprint
            check_resumable(path, marker, fingerprint, spec.tracking_uri)
            if not tracker.has_run(marker.parent_run_id):
                raise ExperimentError(
                    f"{path}: its MLflow parent run {marker.parent_run_id} is not in "
                    f"{spec.tracking_uri}; resume with the tracking URI it started with, or "
                    "--restart to archive the experiment and start over"
                )
            # a round killed while Tune created it: its tuner.pkl is never loaded (the
            # round is recomputed from the store and its Tune run made again)
            unread = (TUNER_FILE,) if marker.opening else ()
            for name in seal.verify(path, tracker, marker.parent_run_id, unread):
                out(f"{path}/{name}: cut short (its upload was interrupted); wrote back the "
                    f"whole version this sweep recorded in {seal.kept_dir(path)}")  # fmt: skip
    elif resume:
        out(f"nothing to resume at {path}: starting the sweep")
    if restart and restorable(path):
        out(f"archived the earlier experiment to {archive(path)}")
    return marker


def check_name_free(spec: Spec, tracker) -> None:
    """A new sweep must not join the MLflow experiment of a sweep of another spec under the
    same name (its trials would mix in `nlsweep report NAME`); one line naming both."""
    for run in tracker.sweep_runs(spec.name):
        theirs = run.data.tags.get(TAG_FINGERPRINT)
        if theirs is not None and theirs != spec.fingerprint:
            other = run.data.tags.get(TAG_SPEC, "another spec")
            raise ExperimentError(
                f"{spec.path}: name: {spec.name!r} is taken in {spec.tracking_uri} by the sweep "
                f"of another spec ({other}, parent run {run.info.run_id[:8]}); expected a new "
                "name for this one (or --resume / --extend of that sweep's storage, or "
                "--restart to log it there anyway)"
            )


@dataclass
class Growth:
    """What `--extend` runs: the new grid points, after the `unfinished` of the `ran` trials
    the experiment planned."""

    points: list[dict]
    ran: int
    unfinished: int


def extension(spec: Spec, marker: Marker, path: str) -> Growth:
    """The new trials `spec` adds to the experiment at `path` (one line, exit 2, for any
    other change to the spec), and how many of the experiment's own trials have not ended."""
    if not marker.fixed:
        raise ExperimentError(
            f"{path}: it was started before --extend existed, so its space is not on record; "
            "finish it with --resume, or --restart it with the larger space"
        )
    old = json.loads(marker.fixed)
    try:
        points = new_points(old, spec.fixed)
    except ConfigError as e:
        raise SpecError.at(spec, e.key, e.expected) from None
    ran = int(marker.trials)  # (written with `fixed`, so never missing beside it)
    finished, _ = trial_counts(spec, path)
    return Growth(points, ran, max(0, ran - finished))
