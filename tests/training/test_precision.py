"""bf16 autocast and torch.compile: what changes (the arithmetic) and what must not (the
float32 training state, exact checkpoints)."""

import math

import pytest
import torch

from models.errors import ConfigError
from nlsweep.training.trainer import Trainer
from nlsweep.training.trial import TrialConfig

TRANSFORMER = {
    "model": {"kind": "transformer", "d_model": 32, "n_layers": 2, "n_heads": 2, "dropout": 0.0},
    "optim": {"kind": "adamw", "lr": 3e-3},
    "data": {"corpus": "pydoc", "seq_len": 32, "batch_size": 8},
    "train": {"steps": 50, "eval_every": 25, "eval_batches": 2, "seed": 1, "threads": 1,
              "final_eval": "sampled"},
}  # fmt: skip
LSTM = {
    "model": {"kind": "nested_lstm", "d_model": 32, "d_ff": 48, "dropout": 0.0},
    "cms": {"periods": {"fast": 1, "medium": 2, "slow": 4}},
    "optim": {"kind": "delta_adam", "lr": 3e-3, "decay_rate": 1e-3},
    "data": {"corpus": "pydoc", "seq_len": 32, "batch_size": 8},
    "state": {"mode": "persistent"},
    "train": {"steps": 50, "eval_every": 25, "eval_batches": 2, "seed": 1, "threads": 1,
              "final_eval": "sampled"},
}  # fmt: skip


def trainer(raw: dict, **train) -> Trainer:
    torch.set_num_threads(1)
    raw = {**raw, "train": {**raw["train"], **train}}
    return Trainer(TrialConfig.from_dict(raw), torch.device("cpu"))


def float32_state(t: Trainer) -> bool:
    sd = t.state_dict()
    tensors = list(sd["model"].values())
    for opt in sd["cms"]["optimizers"].values():
        for st in opt["state"].values():
            tensors += [v for v in st.values() if torch.is_tensor(v) and v.dim() > 0]
    return all(v.dtype in (torch.float32, torch.int64, torch.bool) for v in tensors)


# oneDNN's bf16 LSTM needs AVX-512 BF16 or AMX; without them a bf16 LSTM is refused
CPU_BF16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()


@pytest.mark.parametrize("raw", [TRANSFORMER, LSTM], ids=["transformer", "nested_lstm"])
def test_bf16_tracks_fp32(raw):
    """Over 50 steps, bf16's held-out loss stays within 0.05 nats of fp32's at every
    evaluation, and the weights, moments and delta-rule statistics stay float32."""
    if raw is LSTM and not CPU_BF16:
        pytest.skip("this CPU has no bf16 LSTM kernel (test_bf16_lstm_is_refused_... runs)")
    fp32 = [m["val/loss"] for m in trainer(raw).run()]
    t = trainer(raw, precision="bf16")
    bf16 = [m["val/loss"] for m in t.run()]
    assert fp32[-1] < fp32[0]  # it learned something to track
    assert bf16 == pytest.approx(fp32, abs=0.05)
    assert bf16 != fp32  # bf16 arithmetic really ran
    assert float32_state(t)


@pytest.mark.skipif(CPU_BF16, reason="this CPU runs a bf16 LSTM (tracked above)")
def test_bf16_lstm_is_refused_in_one_line_on_a_cpu_without_bf16_kernels():
    with pytest.raises(ConfigError, match="train.precision: fp32 on this CPU: its oneDNN"):
        trainer(LSTM, precision="bf16")


def compiled_against_eager(raw: dict, steps: int) -> Trainer:
    """Train `raw` eagerly and compiled for `steps` steps: the same losses and weights; the
    compiled trainer."""
    e, c = trainer(raw, steps=steps), trainer(raw, steps=steps, compile=True)
    eager = [e.train_step() for _ in range(steps)]
    compiled = [c.train_step() for _ in range(steps)]
    assert compiled == pytest.approx(eager, rel=1e-5)
    for a, b in zip(e.model.parameters(), c.model.parameters()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    return c


def test_compiled_equals_eager():
    compiled_against_eager(TRANSFORMER, 6)


TITANS = {  # the transformer's settings, one layer, 16 tokens: each compile takes ~30 s
    **TRANSFORMER,
    "model": {**TRANSFORMER["model"], "kind": "titans", "n_layers": 1, "memory_chunk": 8},
    "data": {**TRANSFORMER["data"], "seq_len": 16, "batch_size": 4},
}


DEEP = {  # the Titans memory with deep momentum (its loop, `_Sigmas`, has its own backward)
    **TITANS,
    "model": {**TITANS["model"], "memory_optimizer": "deep_momentum", "memory_deep_hidden": 4},
}


SELFMOD = {
    **TITANS,
    "model": {**TITANS["model"], "kind": "hope_selfmod"},
    "cms": {"token_periods": [4, 8], "inner_lr": 1e-3},
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "raw, mode",
    [(TITANS, "reset"), (TITANS, "persistent"), (SELFMOD, "reset"), (DEEP, "reset")],
    ids=["titans-reset", "titans-persistent", "hope_selfmod-reset", "deep_momentum-reset"],
)  # fmt: skip
def test_a_compiled_memory_equals_eager(raw, mode):
    """The memory compiles with the rest of the forward (one graph when no state is carried:
    no graph break), and a carried state, whose chunk position is read on the host, still
    trains as the eager model does."""
    from torch._dynamo.utils import counters

    raw = {**raw, "state": {"mode": mode}}
    torch._dynamo.reset()
    counters.clear()
    c = compiled_against_eager(raw, 4)
    assert int(c.model.memories()[0].writes) == 4 * 4 * 16  # the compiled memory wrote
    breaks = dict(counters["graph_break"])
    if mode == "reset":
        assert breaks == {}, breaks
    else:
        assert all("item" in reason for reason in breaks), breaks


@pytest.mark.slow
def test_a_compiled_titans_trains_in_bf16():
    """Under bf16 autocast the memory runs eagerly inside the compiled forward (compiled, its
    backward gave NaN at the second step)."""
    t = trainer(TITANS, steps=4, compile=True, precision="bf16")
    losses = [t.train_step() for _ in range(4)]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


@pytest.mark.parametrize(
    "train", [{"precision": "bf16"}, {"compile": True}], ids=["bf16", "compile"]
)
def test_checkpoint_restores_exactly(train):
    """Stop at step 3, restore into a fresh trainer, continue: bit-identical to a straight run."""
    raw = TRANSFORMER
    straight = trainer(raw, steps=6, **train)
    for _ in range(6):
        straight.train_step()
    first = trainer(raw, steps=6, **train)
    for _ in range(3):
        first.train_step()
    state = first.state_dict()
    resumed = trainer(raw, steps=6, **train)
    resumed.load_state_dict(state)
    for _ in range(3):
        resumed.train_step()
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_each_compiled_trainer_compiles_as_in_a_fresh_process(monkeypatch):
    """A Ray actor reused for trial after trial builds one trainer after another: each one's
    shapes get a graph of their own (the cache is one per code object, shared by every
    trainer: past recompile_limit the forward ran eagerly, silently). While another compiled
    trainer is alive, going past the limit is a one-line error, not an eager run."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", False)
    small = {**TRANSFORMER, "model": {**TRANSFORMER["model"], "d_model": 16, "n_layers": 1}}
    wider = {**small, "model": {**small["model"], "d_model": 24}}
    first = trainer(small, steps=2, compile=True)
    first.train_step()
    del first  # its trial ended
    graphs = counters["stats"]["unique_graphs"]
    second = trainer(wider, steps=2, compile=True)
    second.train_step()
    assert counters["stats"]["unique_graphs"] > graphs  # compiled, not run eagerly
    third = trainer(small, steps=2, compile=True)  # beside the second: a graph too many
    with pytest.raises(RuntimeError) as e:
        third.train_step()
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("train.compile:") and "recompile_limit (1)" in msg
    assert second.train_step() > 0  # the trainer alive beside it trains on, compiled


def test_a_model_that_cannot_compile_is_one_line(monkeypatch):
    t = trainer(TRANSFORMER, steps=2, compile=True)

    def broken(*args, **kwargs):
        raise torch._dynamo.exc.Unsupported("data-dependent control flow\nmore detail")

    monkeypatch.setattr(t, "forward", broken)
    with pytest.raises(RuntimeError) as e:
        t.train_step()
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("train.compile:") and "transformer" in msg


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_share_too_small_is_one_line():
    from nlsweep.training.runtime import out_of_share

    device = torch.device("cuda", 0)
    torch.cuda.set_per_process_memory_fraction(0.0005, 0)
    try:
        t = Trainer(TrialConfig.from_dict(TRANSFORMER), device)
        with pytest.raises(torch.cuda.OutOfMemoryError):
            for _ in range(3):
                t.train_step()
        msg = out_of_share(device, 0.0005)
        assert "\n" not in msg and msg.startswith("resources.gpu: 0.0005 of this")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
