"""Data-parallel trials: N workers x B/N rows == 1 worker x B, on real gloo process groups.

The workers here are torch.multiprocessing processes with DDP over gloo, exactly what Ray
Train's TorchTrainer gives each worker on CPU; the sweep tests run the same loop under Ray.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from torch.nn.parallel import DistributedDataParallel

from nlsweep.tracking.store import Tracker
from nlsweep.tracking.tags import TAG_HARDWARE, TAG_ROLE
from nlsweep.training.parallel import DDP_OPTIONS, DataParallel
from nlsweep.training.trainer import Trainer
from nlsweep.training.trial import TrialConfig
from tests.helpers import ROOT
from tests.servers import free_port

LSTM = {
    "model": {"kind": "nested_lstm", "d_model": 16, "d_ff": 24, "dropout": 0.0},
    "cms": {"periods": {"fast": 1, "medium": 2, "slow": 4}},
    "optim": {"kind": "delta_adam", "lr": 3e-3, "decay_rate": 1e-3},
    "data": {"corpus": "pydoc", "seq_len": 16, "batch_size": 8},
    "state": {"mode": "persistent"},
    "train": {"steps": 7, "eval_every": 7, "eval_batches": 2, "seed": 3, "threads": 1},
}
TRANSFORMER = {
    "model": {"kind": "transformer", "d_model": 16, "n_layers": 2, "n_heads": 2, "dropout": 0.0},
    "optim": {"kind": "adamw", "lr": 3e-3},
    "data": {"corpus": "pydoc", "seq_len": 16, "batch_size": 8},
    "train": {"steps": 7, "eval_every": 7, "eval_batches": 2, "seed": 3, "threads": 1},
}
# the outer loop's schedule and a clip that binds: the clipped norm is the global batch's
LSTM_CLIPPED = {
    **LSTM,
    "optim": {
        "kind": "adam",
        "lr": 3e-3,
        "schedule": "cosine",
        "warmup_steps": 2,
        "min_lr": 3e-4,
        "grad_clip": 0.3,
    },
}
HOPE = {
    "model": {"kind": "hope", "d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32,
              "memory_chunk": 4},
    "cms": {"token_periods": [1, 4], "inner_lr": 0.5, "inner_momentum": 0.5},
    "optim": {"kind": "adamw", "lr": 3e-3},
    "data": {"corpus": "pydoc", "seq_len": 16, "batch_size": 4},
    "state": {"mode": "persistent"},
    "train": {"steps": 3, "eval_every": 3, "eval_batches": 1, "seed": 3, "threads": 1},
}  # fmt: skip


def _ddp(module):
    return DistributedDataParallel(module, **DDP_OPTIONS)


def _worker(rank: int, world: int, port: int, raw: dict, steps: int, out: str, start):
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    torch.set_num_threads(1)
    t = Trainer(TrialConfig.from_dict(raw), torch.device("cpu"), dp=DataParallel(rank, world, _ddp))
    if start is not None:
        t.load_state_dict(torch.load(start, weights_only=True))
    losses = [t.train_step() for _ in range(steps)]
    state = t.state_dict()  # collective: every worker gathers
    if rank == 0:
        torch.save({"state": state, "losses": losses}, out)
    _leave()


def _leave() -> None:
    """End a test worker without tearing down DDP: freeing its Reducer holds the GIL while
    gloo's thread, freeing its last work's tensors, waits for the GIL (a deadlock seen once
    in CI, both threads in futex waits). The outputs are written before this."""
    dist.barrier()
    os._exit(0)


def run_workers(raw: dict, steps: int, tmp_path, world: int = 2, start=None) -> dict:
    out = str(tmp_path / f"rank0-{world}.pt")
    mp.spawn(_worker, args=(world, free_port(), raw, steps, out, start), nprocs=world)
    return torch.load(out, weights_only=True)


def leaves(x, key=""):
    """(path, value) of every tensor and number in a nested state, metric history excluded."""
    if isinstance(x, dict):
        for k, v in x.items():
            if k not in ("history", "since_eval", "rng", "elapsed"):
                yield from leaves(v, f"{key}.{k}")
    elif isinstance(x, (list, tuple)):
        for i, v in enumerate(x):
            yield from leaves(v, f"{key}.{i}")
    else:
        yield key, x


def assert_close(a: dict, b: dict, tol: float) -> None:
    la, lb = dict(leaves(a)), dict(leaves(b))
    assert la.keys() == lb.keys()
    for k in la:
        if torch.is_tensor(la[k]):
            assert la[k].shape == lb[k].shape, k
            assert torch.allclose(la[k].double(), lb[k].double(), rtol=tol, atol=tol), k
        elif isinstance(la[k], float):
            assert math.isclose(la[k], lb[k], rel_tol=tol, abs_tol=tol), k
        else:
            assert la[k] == lb[k], k


def one_worker(raw: dict, steps: int, start=None) -> tuple[dict, list[float]]:
    torch.set_num_threads(1)
    t = Trainer(TrialConfig.from_dict(raw), torch.device("cpu"))
    if start is not None:
        t.load_state_dict(torch.load(start, weights_only=True))
    losses = [t.train_step() for _ in range(steps)]
    return t.state_dict(), losses


@pytest.mark.parametrize(
    "raw", [LSTM, TRANSFORMER, LSTM_CLIPPED], ids=["nested_lstm", "transformer", "clipped"]
)
def test_two_workers_equal_one_worker(raw, tmp_path):
    """Weights, optimizer moments, CMS clocks and pending gradients, delta-rule statistics,
    recurrent state and the data cursor after 7 steps (the slow level stepped once and holds
    three batches of gradients and inputs)."""
    single, losses = one_worker(raw, 7)
    two = run_workers(raw, 7, tmp_path)
    assert_close(two["state"], single, tol=2e-5)
    assert two["losses"] == pytest.approx(losses, rel=1e-5)
    if raw is LSTM:
        slow = two["state"]["cms"]["optimizers"]["slow"]["state"]
        assert any("xtx" in st and st["n"] == 3 * 8 * 16 for st in slow.values())
    if raw is LSTM_CLIPPED:
        assert 0 < two["state"]["cms"]["clip"]["clipped"] == single["cms"]["clip"]["clipped"]


def test_checkpoint_moves_between_worker_counts(tmp_path):
    """A 2-worker checkpoint continues on 1 worker, and a 1-worker one on 2, as if nothing
    changed: the checkpoint holds all B rows of the recurrent state."""
    single, _ = one_worker(LSTM, 7)
    two = run_workers(LSTM, 3, tmp_path)
    path = tmp_path / "after3.pt"
    torch.save(two["state"], path)
    resumed, _ = one_worker(LSTM, 4, start=path)
    assert_close(resumed, single, tol=2e-5)
    path1 = tmp_path / "after3-single.pt"
    torch.save(one_worker(LSTM, 3)[0], path1)
    again = run_workers(LSTM, 4, tmp_path, start=path1)
    assert_close(again["state"], single, tol=2e-5)


def test_hope_trains_on_two_workers(tmp_path):
    """The in-context learner's chain under DDP: same losses as one worker, and its
    per-row inner state gathered into the one-worker layout."""
    single, losses = one_worker(HOPE, 3)
    two = run_workers(HOPE, 3, tmp_path)
    assert two["losses"] == pytest.approx(losses, rel=1e-4)
    assert_close(two["state"]["recurrent"], single["recurrent"], tol=1e-4)


def _diverging_worker(rank: int, world: int, port: int, raw: dict, out: str):
    from nlsweep.training.runtime import Diverged

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    torch.set_num_threads(1)
    t = Trainer(TrialConfig.from_dict(raw), torch.device("cpu"), dp=DataParallel(rank, world, _ddp))
    try:
        for _ in range(raw["train"]["steps"]):
            t.train_step()
        stopped = None
    except Diverged as e:
        stopped = e.step
    Path(f"{out}.{rank}").write_text(str(stopped))
    _leave()


def test_workers_stop_together_on_divergence(tmp_path):
    """The divergence check sees the global batch's loss, so every worker stops at the same
    step (one worker stopping alone would leave the others waiting in a collective)."""
    from nlsweep.training.runtime import Diverged

    # the global loss runs 4.76, 4.835, ...: over the bound at step 2
    raw = {**LSTM, "train": {**LSTM["train"], "diverge_above": 4.8}}
    single = Trainer(TrialConfig.from_dict(raw), torch.device("cpu"))
    with pytest.raises(Diverged) as e:
        for _ in range(7):
            single.train_step()
    out = str(tmp_path / "stopped")
    mp.spawn(_diverging_worker, args=(2, free_port(), raw, out), nprocs=2)
    steps = {Path(f"{out}.{r}").read_text() for r in range(2)}
    assert e.value.step == 2 and steps == {"2"}


def test_batch_must_split_evenly():
    from models.errors import ConfigError

    with pytest.raises(ConfigError, match="multiple of resources.workers"):
        Trainer(TrialConfig.from_dict(LSTM), torch.device("cpu"), dp=DataParallel(0, 3))


# -- the same loop as a sweep's trial on Ray Train ------------------------------------------
SWEEP = """\
name: parallel
base:
  model: {kind: nested_lstm, d_model: 16, d_ff: 24, dropout: 0.0}
  cms:   {periods: {fast: 1, medium: 2, slow: 4}}
  optim: {kind: delta_adam, lr: 3.0e-3, decay_rate: 1.0e-3}
  state: {mode: persistent}
  data:  {corpus: pydoc, seq_len: 16, batch_size: 8}
  train: {steps: 800, eval_every: 100, eval_batches: 2, seed: 3, checkpoint_every: 200,
          final_eval: sampled, threads: 1}
space:
  train.seed: {grid: [3]}
search: {algorithm: grid}
resources: {cpu: 1, workers: 2}
max_failures: 2
"""


def _descendants(root: int) -> dict[int, str]:
    """pid -> command line of every live process below `root`."""
    parent, cmd = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            parent[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
            cmd[int(d)] = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
    out = {}
    for pid in cmd:
        p = pid
        while p in parent and p != root and p > 1:
            p = parent[p]
        if p == root and pid != root:
            out[pid] = cmd[pid]
    return out


def _checkpointed_step(experiment) -> int:
    """The step of the newest checkpoint Ray Train registered for the trial (0: none yet)."""
    for path in experiment.glob("train/*/checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(path.read_text()).get("latest_checkpoint_result")
        except (OSError, ValueError):
            continue  # being written
        if latest:
            return int(latest["metrics"]["step"])
    return 0


def _wait_checkpoint(experiment, lo: int, hi: int, proc, log) -> int:
    end = time.time() + 240
    while not lo <= (step := _checkpointed_step(experiment)) <= hi:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.time() < end, f"no registered checkpoint in [{lo}, {hi}] in 240 s"
        time.sleep(0.1)
    return step


@pytest.mark.slow
def test_sweep_trial_on_ray_train_survives_a_killed_worker_and_driver(tmp_path):
    """A `workers: 2` trial runs on Ray Train inside the Tune sweep. One of its workers is
    SIGKILLed after a checkpoint: Ray Train restarts the worker group from it. Then the
    driver is SIGKILLed after a later checkpoint, and `--resume` finds the trial's Ray Train
    run again. The trial's MLflow metrics at every step equal one process training the whole
    batch, none missing or twice."""
    spec = tmp_path / "parallel.yaml"
    spec.write_text(SWEEP)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [sys.executable, str(ROOT / "run_sweep.py"), str(spec), "--storage",
            str(tmp_path / "ray"), "--tracking-uri", uri]  # fmt: skip
    log = tmp_path / "out.txt"
    experiment = tmp_path / "ray" / "parallel"
    with open(log, "w") as out:
        proc = subprocess.Popen(args, cwd=tmp_path, stdout=out, stderr=out)
    try:
        first = _wait_checkpoint(experiment, 200, 400, proc, log)
        workers = [p for p, c in _descendants(proc.pid).items() if "RayTrainWorker" in c]
        assert len(workers) == 2, _descendants(proc.pid)
        os.kill(workers[1], signal.SIGKILL)
        _wait_checkpoint(experiment, first + 200, 600, proc, log)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        with open(log, "a") as out:
            proc = subprocess.Popen([*args, "--resume"], cwd=tmp_path, stdout=out, stderr=out)
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "resuming" in log.read_text()

    tracker = Tracker(uri)
    trials = [r for r in tracker.runs("parallel") if r.data.tags.get(TAG_ROLE) == "trial"]
    assert len(trials) == 1 and trials[0].info.status == "FINISHED"
    run = trials[0]
    assert run.data.tags[TAG_HARDWARE].startswith("2 data-parallel workers")
    logged = {m.step: m.value for m in tracker.history(run.info.run_id, "val/bpc")}
    assert sorted(logged) == list(range(100, 801, 100))  # no gap, no repeat
    # restored, not restarted: the last attempt reported fewer than all 8 evaluations
    assert run.data.metrics["perf/reports"] + run.data.metrics["perf/checkpoints"] < 7

    raw = yaml.safe_load(SWEEP)["base"]
    torch.set_num_threads(1)
    straight = {m["step"]: m["val/bpc"] for m in Trainer(TrialConfig.from_dict(raw)).run()}
    for step, value in straight.items():
        assert logged[step] == pytest.approx(value, rel=1e-4, abs=1e-4), step
