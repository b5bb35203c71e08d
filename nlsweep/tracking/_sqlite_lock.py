"""`sqlite_lock` serialises the creation and schema migration of a fresh SQLite tracking store
(MLflow migrates on first use, and two processes migrating at once fail)."""

from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path


@contextlib.contextmanager
def sqlite_lock(uri: str):
    """Held while a SQLite tracking store is opened (created and migrated on first use)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri[len("sqlite:///") :].partition("?")[0])
    if not db.parent.is_dir():  # MLflow's own error says what is wrong
        yield
        return
    with open(f"{db}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
