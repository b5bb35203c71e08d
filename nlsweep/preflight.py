"""Checks a sweep passes before anything starts: the storage folder, the corpora, and what
an earlier run of the same sweep left behind (resume it, archive it, or refuse to run).

Each failure is one line naming the spec key or folder at fault; nothing has been created
or moved when one is raised (an archive is the last step, after every check passed).
"""

from __future__ import annotations

import tempfile
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


def check_storage(spec: Spec) -> None:
    if "://" in spec.storage:
        return
    try:
        Path(spec.storage).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=spec.storage):
            pass
    except OSError as e:
        raise SpecError.at(
            spec, "storage", f"a writable folder; {spec.storage}: {e.strerror or e}"
        ) from None


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
