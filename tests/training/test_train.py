"""The training loop: held-out evaluation, untouched training state, exact state round trip."""

import io
import math

import pytest
import torch
import torch.nn.functional as F

from nlsweep.cli import train_main as main
from nlsweep.training.runtime import Diverged
from nlsweep.training.trainer import Trainer
from nlsweep.training.trial import TrialConfig

BASE = {
    "model": {"kind": "nested_lstm", "d_model": 16, "d_ff": 24, "dropout": 0.1},
    "cms": {"periods": {"fast": 1, "medium": 2, "slow": 4}},
    "optim": {"kind": "adam", "lr": 3e-3},
    "data": {"corpus": "pydoc", "seq_len": 16, "batch_size": 4},
    "train": {"steps": 6, "eval_every": 3, "eval_batches": 2, "seed": 3, "threads": 1},
}


@pytest.fixture(scope="module")
def corpus():
    from nlsweep.data.config import DataConfig
    from nlsweep.data.load import load_corpus

    return load_corpus(DataConfig(corpus="pydoc"))


def make(corpus, optim=None, state=None, **train):
    raw = {**BASE, "train": {**BASE["train"], **train}}
    if optim:
        raw["optim"] = optim
    if state:
        raw["state"] = state
    return Trainer(TrialConfig.from_dict(raw), device=torch.device("cpu"), corpus=corpus)


def flat_state(t: Trainer) -> dict:
    """Every tensor and number of the training state, flattened for exact comparison."""
    out = {}

    def walk(x, key):
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{key}.{k}")
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, f"{key}.{i}")
        else:
            out[key] = x.clone() if torch.is_tensor(x) else x

    walk(t.state_dict(), "")
    return out


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a
    )


def _scored(model, pieces, carry=False):
    """Summed cross-entropy and count of the non-ignored targets, by hand."""
    total, n, state = 0.0, 0, None
    model.eval()
    with torch.no_grad():
        for x, y in pieces:
            logits, new = model(x, state if carry else None)
            state = new
            total += F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum",
                ignore_index=-100,
            ).item()  # fmt: skip
            n += int((y != -100).sum())
    return total, n


def test_metrics_are_held_out(corpus):
    t = make(corpus)
    reports = list(t.run())
    assert [m["step"] for m in reports] == [3, 6]
    first, last = reports
    # the periodic evaluation: the fixed sampled windows
    assert first["data/val_tokens"] == 2 * 4 * 16 and first["eval/full_split"] == 0.0
    # the final one: the whole held-out split, every held-out token predicted exactly once,
    # as 4 contiguous rows of ceil((n - 1) / 4) tokens, scored here in windows of 16
    val = corpus.val
    row = -(-(len(val) - 1) // 4)
    xs = torch.zeros(4 * row, dtype=torch.long)
    ys = torch.full((4 * row,), -100, dtype=torch.long)
    xs[: len(val) - 1], ys[: len(val) - 1] = val[:-1], val[1:]
    xs, ys = xs.view(4, row), ys.view(4, row)
    total, n = _scored(t.model, [(xs[:, c : c + 16], ys[:, c : c + 16]) for c in range(0, row, 16)])
    assert n == len(val) - 1 == last["data/val_tokens"] and last["eval/full_split"] == 1.0
    assert last["val/loss"] == pytest.approx(total / n, rel=1e-6)
    assert last["val/bpc"] == pytest.approx(last["val/loss"] / math.log(2))
    assert last["val/ppl"] == pytest.approx(math.exp(last["val/loss"]))
    assert last["cms/fast/updates"] == 6 and last["cms/medium/updates"] == 3
    assert last["cms/slow/updates"] == 1
    assert 0 <= last["data/val_overlap"] <= 1 and last["perf/tokens_per_s"] > 0
    # held-out windows come from the held-out tokens, not the training stream
    assert torch.equal(t.heldout.window(0)[0][0], corpus.val[:16].long())
    # sampled: today's behaviour, the last report scores the same windows as the others
    s = make(corpus, final_eval="sampled")
    last = list(s.run())[-1]
    total, n = _scored(s.model, [s.heldout.window(k) for k in range(2)])
    assert n == last["data/val_tokens"] == 2 * 4 * 16 and last["eval/full_split"] == 0.0
    assert last["val/loss"] == pytest.approx(total / n, rel=1e-6)


def test_evaluation_leaves_training_state_untouched(corpus):
    t = make(corpus)
    for _ in range(3):  # mid-chunk: medium and slow levels hold pending gradients
        t.train_step()
    before = flat_state(t)
    t.evaluate()
    assert same(before, flat_state(t))


VARIANTS = {
    "adam": ({"kind": "adam", "lr": 3e-3}, None),
    "delta_adam+persistent": ({"kind": "delta_adam", "lr": 3e-3, "decay_rate": 1e-3},
                              {"mode": "persistent"}),
    "delta_sgd+momentum+reset_every": ({"kind": "delta_sgd", "lr": 0.1, "momentum": 0.9,
                                        "decay_rate": 1e-2}, {"mode": "reset_every", "every": 5}),
    # the schedule's position and the clip counters are training state too
    "adamw+cosine+clip": ({"kind": "adamw", "lr": 3e-3, "weight_decay": 0.1, "warmup_steps": 2,
                           "schedule": "cosine", "min_lr": 3e-4, "grad_clip": 0.5}, None),
}  # fmt: skip


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_state_round_trip_is_exact(corpus, tmp_path, variant):
    optim, state = VARIANTS[variant]
    straight = make(corpus, optim, state, steps=8, eval_every=4)
    full = list(straight.run())

    first = make(corpus, optim, state, steps=8, eval_every=4)
    run = first.run()
    while first.step < 3:  # stop mid-chunk of the slow level (period 4)
        first.train_step()
    path = tmp_path / "state.pt"
    torch.save(first.state_dict(), path)
    del run

    resumed = make(corpus, optim, state, steps=8, eval_every=4)
    resumed.load_state_dict(torch.load(path, weights_only=True))
    rest = list(resumed.run())
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    # perf/: wall-clock and memory measurements, the only values allowed to differ
    strip = [{k: v for k, v in m.items() if not k.startswith("perf/")} for m in full]
    assert [{k: v for k, v in m.items() if not k.startswith("perf/")} for m in rest] == strip
    assert resumed.cms.updates == straight.cms.updates


def test_delta_rule_acts_and_accumulates_over_a_chunk(corpus):
    t = make(corpus, {"kind": "delta_adam", "lr": 3e-3, "decay_rate": 1e-3})
    for _ in range(3):
        t.train_step()
    slow = t.cms.optimizers["slow"]  # period 4: three batches of inputs are waiting
    assert slow.state[t.model.ffn_slow.up.weight]["n"] == 3 * 4 * 16
    t.train_step()
    assert slow.state[t.model.ffn_slow.up.weight]["n"] == 0
    m = t._metrics()
    assert m["optim/slow/decay_norm"] > 0 and m["optim/fast/decay_norm"] > 0
    # fast level: the LSTM's input-to-hidden weight and the head
    assert m["optim/fast/delta_matrices"] == 2 and m["optim/medium/delta_matrices"] == 2


def test_non_finite_loss_is_divergence(corpus):
    t = make(corpus)
    with torch.no_grad():
        t.model.head.bias.fill_(float("nan"))
    with pytest.raises(Diverged, match="training loss nan at step 1"):
        t.train_step()


def test_divergence_bound_stops_before_the_update(corpus):
    t = make(corpus, diverge_above=1.0)  # the first loss is about ln(vocab) > 1
    before = [p.detach().clone() for p in t.model.parameters()]
    with pytest.raises(Diverged) as e:
        t.train_step()
    assert e.value.step == 1 and e.value.loss > 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, t.model.parameters()))


def test_train_cli_exit_code_on_divergence(write_spec, capsys):
    assert main([str(write_spec()), "--set", "base.train.diverge_above=1.0"]) == 3
    assert "diverged: training loss" in capsys.readouterr().err


def test_train_cli_runs_the_base_config(write_spec, capsys):
    spec = write_spec()
    assert main([str(spec), "--set", "base.train.steps=4", "--set", "base.train.eval_every=2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("tiny: nested_lstm")
    assert [ln.split()[1] for ln in out[1:]] == ["2", "4"]
    assert all("val/bpc" in ln for ln in out[1:])


@pytest.mark.parametrize("entry", ["nlsweep train", "python -m nlsweep.train"])
def test_train_runs_as_a_subcommand_and_as_a_module(write_spec, entry):
    """`nlsweep train SPEC` and its alias `python -m nlsweep.train SPEC`, as a user types them."""
    import subprocess
    import sys

    module = ["-m", "nlsweep", "train"] if entry == "nlsweep train" else ["-m", "nlsweep.train"]
    args = [str(write_spec()), "--set", "base.train.steps=2", "--set", "base.train.eval_every=2"]
    out = subprocess.run([sys.executable, *module, *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith("tiny: nested_lstm")
    assert out.stdout.splitlines()[1].startswith("step 2")


def test_train_cli_bad_spec(write_spec, capsys):
    assert main([str(write_spec()), "--set", "base.train.steps=0"]) == 2
    assert "--set: base.train.steps: a positive integer" in capsys.readouterr().err


def test_train_cli_data_errors_are_one_line(write_spec, capsys, tmp_path, monkeypatch):
    spec = write_spec()
    assert main([str(spec), "--set", "base.data.seq_len=100000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{spec}: base.data.seq_len: at most") and "\n" not in err
    missing = tmp_path / "none.txt"
    assert main([str(spec), "--set", "base.data.corpus=text", "--set",
                 f"base.data.path={missing}"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert err == f"{spec}: data.path: {missing} does not exist; expected a file, folder or glob"


def test_state_dict_is_weights_only_loadable(corpus):
    t = make(corpus)
    t.train_step()
    buf = io.BytesIO()
    torch.save(t.state_dict(), buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True)["step"] == 1
