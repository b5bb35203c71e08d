"""A trial stopped at a checkpoint and restored into a fresh Trainer ends bit-identical to the
same trial run straight through: parameters, optimizer and CMS state, metrics at every step."""

import random

import numpy as np
import pytest
import torch

from nlsweep.data.config import DataConfig
from nlsweep.data.load import load_corpus
from nlsweep.training import checkpoint
from nlsweep.training.checkpoint import CHECKPOINT_FILE, CheckpointError
from nlsweep.training.trainer import CHECKPOINT_ONLY, Trainer
from nlsweep.training.trial import TrialConfig

# Persistent state, CMS periods that straddle the checkpoint at step 4 (medium 3, slow 7 have
# pending gradients there), delta_adam with decay (X^T X statistics mid-chunk), surprise on.
HARD = {
    "model": {"kind": "nested_lstm", "d_model": 12, "d_ff": 16},
    "cms": {"periods": {"fast": 1, "medium": 3, "slow": 7}},
    "optim": {"kind": "delta_adam", "lr": 3e-3, "decay_rate": 1e-3},
    "surprise": {"weights": {"fast": 0.05, "medium": 0.1}, "every_n": 1},
    "state": {"mode": "persistent"},
    "data": {"corpus": "pydoc", "seq_len": 8, "batch_size": 3},
    "train": {"steps": 12, "eval_every": 2, "eval_batches": 2, "seed": 3, "threads": 1},
}
TIMING = ("perf/",)  # wall-clock measurements, the only values allowed to differ


@pytest.fixture(scope="module")
def corpus():
    return load_corpus(DataConfig(corpus="pydoc"))


def make(corpus, raw=HARD):
    return Trainer(TrialConfig.from_dict(raw), device=torch.device("cpu"), corpus=corpus)


def deterministic(history):
    return [{k: v for k, v in m.items() if not k.startswith(TIMING)} for m in history]


def scramble_global_rngs():
    """What another trial in the same (reused) worker process would leave behind."""
    random.seed(999)
    np.random.seed(999)
    torch.manual_seed(999)


def resume_equals_straight(corpus, folder, straight, full, before):
    """Restore the checkpoint in `folder` into a fresh Trainer (global RNGs scrambled), run
    it to the end, and check the metrics (`before` the stop, then after) and the weights
    equal the straight run's; returns the resumed Trainer."""
    scramble_global_rngs()
    resumed = make(corpus)
    checkpoint.restore(resumed, folder)
    after = list(resumed.run())
    assert [m["step"] for m in before + after] == [2, 4, 6, 8, 10, 12]
    assert deterministic(before + after) == deterministic(full)
    for (name, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values()
    ):
        assert torch.equal(a, b), name
    return resumed


@pytest.mark.parametrize("at", [1, 5, 7])
def test_a_checkpoint_between_evaluations_restores_bit_identical(corpus, tmp_path, at):
    """What a stop signal asks for (`preempt_grace_s`): the state at a step that is no
    evaluation's, partial interval included (loss sums, surprise statistics, CMS pending
    gradients), restored into a fresh Trainer, ends as the straight run does."""
    straight = make(corpus)
    full = list(straight.run())

    first = make(corpus)
    before = []
    for m in first.run(save_now=lambda: first.step == at):
        if m.get(CHECKPOINT_ONLY):
            assert m == {"step": at, CHECKPOINT_ONLY: 1.0}  # no evaluation with it
            checkpoint.save(first, tmp_path)
            break
        before.append(m)
    else:
        pytest.fail("run() never yielded the checkpoint it was asked for")
    assert first.step == at and first._since_eval["n"] == at % 2
    resume_equals_straight(corpus, tmp_path, straight, full, before)


def test_stop_and_restore_is_bit_identical(corpus, tmp_path):
    straight = make(corpus)
    full = list(straight.run())

    first = make(corpus)
    before = []
    for m in first.run():
        before.append(m)
        if first.step == 4:
            break
    assert first.cms.pending["medium"] == 1 and first.cms.pending["slow"] == 4
    checkpoint.save(first, tmp_path)
    del first

    resumed = resume_equals_straight(corpus, tmp_path, straight, full, before)
    assert deterministic(resumed.history) == deterministic(straight.history)
    for a, b in zip(straight.state, resumed.state):
        assert torch.equal(a, b)
    sa, sb = straight.cms.state_dict(), resumed.cms.state_dict()
    assert sa["clock"] == sb["clock"] and sa["updates"] == sb["updates"]
    for level in sa["optimizers"]:
        for i, st in sa["optimizers"][level]["state"].items():
            for key, value in st.items():
                other = sb["optimizers"][level]["state"][i][key]
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(other)), (level, key)
    # The metrics prove every mechanism acted across the restore.
    last = resumed.history[-1]  # the final evaluation, as run() yielded it
    assert last["cms/slow/updates"] == 12 // 7 and last["cms/medium/updates"] == 4
    assert last["optim/fast/decay_norm"] > 0 and last["surprise/steps"] == 2


@pytest.mark.parametrize(
    "change",
    [
        {"state": {"mode": "reset_every", "every": 5}},
        {"optim": {"kind": "delta_sgd", "lr": 0.05, "decay_rate": 1e-3, "momentum": 0.9}},
        {"optim": {"kind": "adamw", "lr": 3e-3}, "surprise": {}, "state": {"mode": "reset"}},
    ],
    ids=["reset_every", "delta_sgd_momentum", "adamw"],
)
def test_restore_at_every_evaluation_matches(corpus, tmp_path, change):
    raw = {**HARD, **change}
    full = deterministic(list(make(corpus, raw).run()))
    for stop in (2, 4, 6, 8, 10):
        t = make(corpus, raw)
        seen = []
        for m in t.run():
            seen.append(m)
            if t.step == stop:
                break
        folder = tmp_path / f"at{stop}"
        folder.mkdir()
        checkpoint.save(t, folder)
        scramble_global_rngs()
        r = make(corpus, raw)
        checkpoint.restore(r, folder)
        assert deterministic(seen + list(r.run())) == full, stop


def test_checkpoint_loads_with_weights_only(corpus, tmp_path):
    t = make(corpus)
    next(t.run())
    checkpoint.save(t, tmp_path)
    state = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    assert state["format"] == 2 and state["step"] == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_bad_checkpoints_fail_with_the_file_named(corpus, tmp_path):
    with pytest.raises(CheckpointError, match="trainer.pt: missing"):
        checkpoint.load(tmp_path)
    torch.save({"format": 99}, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(CheckpointError, match="format 99, expected 2"):
        checkpoint.load(tmp_path)
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="trainer.pt: unreadable"):
        checkpoint.load(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"format": 2, "x": Evil()}, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(CheckpointError, match="unreadable"):
        checkpoint.load(tmp_path)  # weights_only refuses to run the pickled call


TITANS = {
    "model": {"kind": "titans", "d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32,
              "memory_chunk": 4},
    "optim": {"kind": "delta_adam", "lr": 3e-3, "decay_rate": 1e-3},
    "data": {"corpus": "pydoc", "seq_len": 8, "batch_size": 3},
    "train": {"steps": 8, "eval_every": 2, "eval_batches": 2, "seed": 5, "threads": 1,
              "final_eval": "sampled"},  # fmt: skip
}  # fmt: skip


@pytest.mark.parametrize(
    "raw",
    [
        {**TITANS, "state": {"mode": "persistent"}},
        {**TITANS, "data": {"corpus": "mqar", "seq_len": 32, "batch_size": 4, "num_kv_pairs": 4}},
        {
            **TITANS,
            "model": {**TITANS["model"], "kind": "hope"},
            "cms": {"token_periods": [1, 3], "inner_lr": 0.5, "inner_momentum": 0.5},
            "teach": {"scale": 1.0, "warmup_steps": 3, "clip": 1e-4},
            "state": {"mode": "persistent"},
        },
        {
            **TITANS,
            "model": {**TITANS["model"], "kind": "hope"},
            "cms": {
                "token_periods": [1, 3],
                "inner_lr": 0.5,
                "inner_momentum": 0.5,
                "inner_optimizer": "deep_momentum",
                "deep_momentum_hidden": 4,
            },
            "state": {"mode": "persistent"},
        },
        {
            **TITANS,
            "model": {
                **TITANS["model"],
                "memory_optimizer": "deep_momentum",
                "memory_deep_hidden": 4,
            },
            "state": {"mode": "persistent"},
        },  # fmt: skip
    ],
    ids=[
        "titans-persistent-memory",
        "titans-mqar",
        "hope-persistent",
        "hope-deep-momentum",
        "titans-deep-momentum",
    ],
)
def test_titans_restore_is_bit_identical(corpus, tmp_path, raw):
    data = None if raw["data"]["corpus"] == "mqar" else corpus
    straight = Trainer(TrialConfig.from_dict(raw), device=torch.device("cpu"), corpus=data)
    full = deterministic(list(straight.run()))
    first = Trainer(TrialConfig.from_dict(raw), device=torch.device("cpu"), corpus=data)
    seen = []
    for m in first.run():
        seen.append(m)
        if first.step == 4:
            break
    checkpoint.save(first, tmp_path)
    scramble_global_rngs()
    resumed = Trainer(TrialConfig.from_dict(raw), device=torch.device("cpu"), corpus=data)
    checkpoint.restore(resumed, tmp_path)
    assert deterministic(seen + list(resumed.run())) == full
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert full[-1]["memory/0/writes"] > 0
