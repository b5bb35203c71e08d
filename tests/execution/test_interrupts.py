"""The stop signals, each handled the same way: outside Tune's run a KeyboardInterrupt, that
phase's interruption; during it, the checkpoint request (`preempt_grace_s`) and then Tune's
graceful stop, called from Tune's loop; the exit code is 128 + the first signal."""

import os
import signal

import pytest

from nlsweep.execution import preemption
from nlsweep.execution.interrupts import Interrupts

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")


@pytest.fixture
def tune_stop(monkeypatch):
    """A stand-in for the handler Tune installs for SIGUSR1 (its graceful stop)."""
    calls = []
    old = signal.signal(signal.SIGUSR1, lambda sig, frame: calls.append(sig))
    yield calls
    signal.signal(signal.SIGUSR1, old)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143),
                                       (signal.SIGHUP, 129)])  # fmt: skip
def test_outside_the_run_each_signal_interrupts_that_phase(sig, code):
    stops = Interrupts(grace_s=30)
    stops.install()
    try:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), sig)
            signal.sigtimedwait([], 0.5)  # (let the handler run)
    finally:
        stops.restore()
    assert stops.exit_code == code and stops.name == signal.Signals(sig).name


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_during_the_run_the_trials_are_asked_first_then_tune_stops(sig, tune_stop):
    said = []
    stops = Interrupts(grace_s=30, out=said.append)
    stops.install()
    try:
        with stops.fitting():
            callback = preemption.Preemption("exp")
            callback.setup()  # Tune's start of the run: the request can be carried out
            os.kill(os.getpid(), sig)
            assert tune_stop == []  # not from the handler: from Tune's loop, below
            assert preemption.REQUEST.at is not None
            callback.on_step_begin(0, [])  # no trial running: nothing to wait for
            assert tune_stop == [sig]
            with pytest.raises(KeyboardInterrupt):  # a second signal stops at once
                os.kill(os.getpid(), signal.SIGINT)
                signal.sigtimedwait([], 0.5)
    finally:
        stops.restore()
    assert stops.exit_code == 128 + sig


def test_without_grace_or_callback_tune_stops_from_the_handler(tune_stop):
    for grace, watched in ((0, True), (30, False)):
        stops = Interrupts(grace_s=grace)
        stops.install()
        try:
            with stops.fitting():
                preemption.REQUEST.watched = watched
                os.kill(os.getpid(), signal.SIGTERM)
                signal.sigtimedwait([], 0.2)
        finally:
            stops.restore()
    assert tune_stop == [signal.SIGTERM, signal.SIGTERM]


class FakeTrial:
    def __init__(self, trial_id, status="RUNNING"):
        self.trial_id, self.status, self.last_result = trial_id, status, {}


def test_the_grace_bounds_the_wait_and_the_ending_counts_each_trial(monkeypatch):
    from ray.experimental import internal_kv

    kv = {}
    monkeypatch.setattr(internal_kv, "_internal_kv_initialized", lambda: True)
    monkeypatch.setattr(internal_kv, "_internal_kv_put",
                        lambda k, v, namespace=None: kv.__setitem__(k, v))  # fmt: skip
    monkeypatch.setattr(internal_kv, "_internal_kv_del",
                        lambda k, namespace=None: kv.pop(k, None))  # fmt: skip
    stopped, said = [], []
    preemption.REQUEST.clear()
    callback = preemption.Preemption("exp")
    callback.setup()
    assert preemption.ask(30, lambda: stopped.append(1), said.append)
    trials = [FakeTrial("a"), FakeTrial("b"), FakeTrial("c", "PENDING")]
    callback.on_step_begin(0, trials)
    assert set(kv) == {"preempt:exp"} and not stopped  # published; a and b asked
    assert said == ["stopping: 2 running trials asked to checkpoint where they are first "
                    "(preempt_grace_s 30 s)"]  # fmt: skip
    trials[0].last_result = {"step": 37, preemption.PREEMPTED: 1.0}
    callback.on_checkpoint(1, trials, trials[0], checkpoint=None)
    callback.on_step_begin(1, trials)
    assert not stopped  # b still has time
    preemption.REQUEST.at -= 31  # the grace ran out
    callback.on_step_begin(2, trials)
    assert stopped == [1] and kv == {}  # stopped once, the request taken back
    assert preemption.REQUEST.outcome == (
        "at the signal, 1 of 2 running trials saved a checkpoint where they were (steps 37); "
        "1 did not within preempt_grace_s 30 s and resume from their last periodic checkpoint"
    )
    assert preemption.REQUEST.saved == 1
    callback.on_step_begin(3, trials)
    assert stopped == [1]


def test_a_trial_reads_each_request_once_and_at_most_every_second(monkeypatch):
    from ray.experimental import internal_kv

    token, reads = [None], []
    monkeypatch.setattr(internal_kv, "_internal_kv_initialized", lambda: True)
    monkeypatch.setattr(internal_kv, "_internal_kv_get",
                        lambda k, namespace=None: reads.append(k) or token[0])  # fmt: skip
    now = [100.0]
    monkeypatch.setattr(preemption.time, "monotonic", lambda: now[0])
    asked = preemption.CheckpointRequest("exp")
    assert not asked() and len(reads) == 1
    token[0] = b"1.5"
    assert not asked() and len(reads) == 1  # within the second: not read
    now[0] += 1.0
    assert asked() and not asked()  # once per request
    now[0] += 1.0
    assert not asked() and len(reads) == 3
    token[0] = b"9.0"  # a later request
    now[0] += 1.0
    assert asked()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # (that print)
def test_a_signal_whose_interrupt_a_finalizer_dropped_is_raised_by_check():
    """A signal that lands while Python runs a finalizer (SQLAlchemy's, in MLflow reads):
    the handler's KeyboardInterrupt is printed as "Exception ignored" and dropped, so the
    phase would go on; the recorded signal still stops it at the next `check`."""
    import weakref

    stops = Interrupts()
    stops.install()
    try:

        class Held:
            pass

        def finalizer(_):
            os.kill(os.getpid(), signal.SIGHUP)
            sum(range(10_000))  # the handler runs here, inside the finalizer

        held = Held()
        ref = weakref.ref(held, finalizer)
        del held  # the finalizer runs; its KeyboardInterrupt does not reach this frame
        assert ref() is None and stops.signal == signal.SIGHUP
        with pytest.raises(KeyboardInterrupt):
            stops.check()
    finally:
        stops.restore()
    assert stops.exit_code == 129
