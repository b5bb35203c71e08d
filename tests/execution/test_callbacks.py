"""Tune's trial events as the sweep handles them: a pickled error in storage is deleted once
Tune has recorded it, so the driver never unpickles what storage holds, and a 0-byte one (a
full disk) cannot end the sweep with EOFError."""

from types import SimpleNamespace

import pyarrow.fs
import pytest

from nlsweep.execution.callbacks import _drop_pickled_error


def test_a_trials_pickled_error_is_deleted_and_tune_falls_back_to_its_text(tmp_path):
    from ray.tune.experiment.trial import Trial

    (tmp_path / "error.pkl").write_bytes(b"")  # what a full disk leaves
    (tmp_path / "error.txt").write_text("Traceback ...\nOSError: [Errno 28] No space left\n")
    storage = SimpleNamespace(trial_fs_path=str(tmp_path),
                              storage_filesystem=pyarrow.fs.LocalFileSystem())  # fmt: skip
    trial = SimpleNamespace(run_metadata=SimpleNamespace(pickled_error_filename="error.pkl"),
                            storage=storage)  # fmt: skip
    with pytest.raises(EOFError):  # Ray's own collection of results, on e12bdb6's crash
        Trial.get_pickled_error(trial)
    _drop_pickled_error(trial)
    assert not (tmp_path / "error.pkl").exists() and (tmp_path / "error.txt").exists()
    # Tune's own reader now finds nothing to unpickle (it would raise EOFError before)
    assert Trial.get_pickled_error(trial) is None
    _drop_pickled_error(trial)  # twice, or with the file gone: nothing happens


def test_a_worker_killed_for_memory_is_named_out_of_memory(monkeypatch):
    from nlsweep.execution import callbacks

    last = {"perf/cpu_rss_peak_mb": 3072.0, "hostname": callbacks.socket.gethostname()}
    ray_oom = (
        "ray.exceptions.OutOfMemoryError: Task was killed due to the node running low on memory."
    )
    assert callbacks.oom_reason(ray_oom, last, 0).startswith(
        "out of memory: Ray's memory monitor killed it; its last reported peak RSS 3.00 GB ("
    )
    died = "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task."
    monkeypatch.setattr(callbacks, "kernel_oom_kills", lambda: 5)
    assert callbacks.oom_reason(died, last, 4).startswith(
        "out of memory: the kernel's OOM killer ended its worker; its last reported peak RSS"
    )
    assert callbacks.oom_reason(died, last, 5) == died  # no kill counted: not called OOM
    assert callbacks.oom_reason("ValueError: boom", last, 4) == "ValueError: boom"
    elsewhere = {**last, "hostname": "another-node"}
    assert callbacks.oom_reason(died, elsewhere, 4) == died  # this machine's count says nothing
