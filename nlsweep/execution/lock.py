"""One driver per experiment: a lock beside the experiment folder.

Two drivers running the same sweep name into the same storage would interleave their trials,
checkpoints and MLflow runs in one folder. The first driver holds `STORAGE/NAME.lock` (spec
names have no dot, so this never names an experiment) until it exits; a second one is
refused with one line naming the holder.

- Folders (local or shared filesystems): an exclusive `flock` on the file. The kernel (or
  the NFS server) drops it when the process ends, however it ends, so a crashed driver never
  leaves a stale lock.
- Object stores (`s3://` ...), which have no locks: an object naming the holder and
  refreshed every `HEARTBEAT_S` by a thread; one not refreshed for `STALE_S`, or held by a
  dead process on this machine, is stale and taken over. Two drivers starting within the
  same second can both see none; each re-reads after writing, and the loser is refused.

The lock that creates a fresh SQLite tracking store once is the tracking package's
(`nlsweep/tracking/_sqlite_lock.py`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from nlsweep.execution.experiment import ExperimentError, filesystem, read_bytes

HEARTBEAT_S = 20.0
STALE_S = 90.0


def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}


def _describe(h: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(h.get("since", 0))))
    return f"pid {h.get('pid')} on {h.get('host')}, since {since}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ExperimentLock:
    def __init__(self, storage: str, name: str):
        self.path = f"{storage.rstrip('/')}/{name}.lock"
        self.experiment = f"{storage.rstrip('/')}/{name}"
        self.remote = "://" in storage
        self._fd: int | None = None
        self._token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _refuse(self, holder: dict) -> ExperimentError:
        return ExperimentError(
            f"{self.experiment}: another driver is running this sweep ({_describe(holder)}; "
            f"lock {self.path}); wait for it to end, or stop it first"
        )

    def acquire(self) -> ExperimentLock:
        if self.remote:
            self._acquire_object()
        else:
            self._acquire_file()
        return self

    def _acquire_file(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = {}
            with contextlib.suppress(OSError, ValueError):
                holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            os.close(fd)
            raise self._refuse(holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        self._fd = fd

    def _read_object(self) -> dict | None:
        try:
            return json.loads(read_bytes(self.path).decode())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable: treated as stale

    def _write_object(self) -> None:
        fs, p = filesystem(self.path)
        with fs.open_output_stream(p) as f:
            f.write(json.dumps({**_holder(), "token": self._token, "beat": time.time()}).encode())

    def _stale(self, h: dict) -> bool:
        if time.time() - float(h.get("beat", 0)) > STALE_S:
            return True
        return h.get("host") == socket.gethostname() and not _pid_alive(int(h.get("pid", 0)))

    def _acquire_object(self) -> None:
        held = self._read_object()
        if held and not self._stale(held):
            raise self._refuse(held)
        self._write_object()
        time.sleep(1.0)  # a driver that wrote at the same moment has written by now
        now = self._read_object() or {}
        if now.get("token") != self._token:
            raise self._refuse(now)
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                self._write_object()

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            held = self._read_object() or {}
            if held.get("token") == self._token:
                fs, p = filesystem(self.path)
                with contextlib.suppress(OSError):
                    fs.delete_file(p)
