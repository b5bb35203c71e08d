"""Stop signals: SIGTERM (what Slurm, Kubernetes and other schedulers send on preemption),
SIGHUP and SIGINT (Ctrl-C) all stop a sweep the way Ctrl-C stops a Ray Tune run, then the
sweep ends with the signal's exit code and the command that resumes it.

    during tuner.fit   the first signal asks the running trials to checkpoint where they
                       are, within preempt_grace_s (`preemption.py`), then Tune to stop
                       gracefully (its own handler, the one it installs for SIGUSR1:
                       running trials end, the experiment state is saved one last time); a
                       second one stops at once (KeyboardInterrupt)
    elsewhere          KeyboardInterrupt, handled as an interruption of that phase
    exit codes         128 + the signal: 130 SIGINT, 143 SIGTERM, 129 SIGHUP

Why SIGINT is taken from Tune (TUNE_DISABLE_SIGINT_HANDLER): Tune's handler keeps to itself
that it fired, and a sweep whose trials all look ended would then exit 0; here every stop is
recorded, so any ending after a signal is non-zero and says how to resume.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

from nlsweep.execution import preemption

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
ENV = "TUNE_DISABLE_SIGINT_HANDLER"


class Interrupts:
    """The stop signal a sweep received (None: none yet), and the handlers that record it."""

    def __init__(self, grace_s: float = 0.0, out=print):
        self.grace_s, self.out = grace_s, out
        self.signal: int | None = None
        self._in_fit = False
        self._old: dict[int, object] = {}

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signal or signal.SIGINT)

    @property
    def name(self) -> str:
        return signal.Signals(self.signal or signal.SIGINT).name

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # (signal handlers belong to the main thread; Tune's own then apply)
        self._env = os.environ.get(ENV)
        os.environ[ENV] = "1"
        for sig in SIGNALS:
            self._old[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        if self._old:
            if self._env is None:
                os.environ.pop(ENV, None)
            else:
                os.environ[ENV] = self._env
        self._old.clear()

    @contextmanager
    def fitting(self):
        """While Tune runs the trials, a first signal asks it to stop gracefully."""
        self._in_fit = True
        preemption.REQUEST.clear()
        try:
            yield
        finally:
            self._in_fit = False

    def check(self) -> None:
        """KeyboardInterrupt if a signal came: the handler's own can be lost, where the
        signal lands while Python runs a finalizer (it prints "Exception ignored in")."""
        if self.signal is not None:
            raise KeyboardInterrupt

    def _handle(self, sig: int, frame) -> None:
        first = self.signal is None
        self.signal = self.signal or sig
        tune_stop = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
        if first and self._in_fit and callable(tune_stop):
            # Tune's graceful stop (trials end, state saved), after the trials' checkpoints
            if not preemption.ask(self.grace_s, lambda: tune_stop(sig, frame), self.out):
                tune_stop(sig, frame)
            return
        raise KeyboardInterrupt
