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
