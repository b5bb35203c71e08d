"""Training tokens/s of each model kind in fp32, bf16 and bf16 + torch.compile, on one device,
and the scaling of a data-parallel trial (1 worker vs 2 gloo/NCCL workers).

    python bench/throughput.py [--device cpu|cuda] [--d-model 256] [--batch 64] [--seq 512]
                               [--layers 4] [--steps 3] [--kinds transformer,hope,...]
                               [--workers 2]

Each row builds the kind at the given size (Tiny Shakespeare's vocabulary when
$NLSWEEP_DATA has it, else pydoc), runs one untimed step (allocation, compilation), then
times `--steps` training steps with a device sync at each end. Prints a markdown table:
tokens/s per precision mode, and the ratio to fp32. `--workers N` adds the data-parallel row:
the transformer's tokens/s with N workers (processes on this machine, DDP over gloo on CPU or
NCCL on GPUs, each with B/N rows and cores/N threads) over one worker with all the cores.
A figure to read, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from nlsweep.training.trainer import Trainer
from nlsweep.training.trial import TrialConfig

KINDS = ("nested_lstm", "transformer", "titans", "hope_attention", "hope")
MODES = {
    "fp32": {},
    "bf16": {"precision": "bf16"},
    "bf16+compile": {"precision": "bf16", "compile": True},
}


def config(kind: str, a, threads: int, **train) -> dict:
    model = {"kind": kind, "d_model": a.d_model}
    if kind == "nested_lstm":
        model["d_ff"] = 4 * a.d_model
    else:
        model.update(n_layers=a.layers, n_heads=max(1, a.d_model // 64), d_ff=4 * a.d_model)
    if kind in ("titans", "hope"):
        model["memory_chunk"] = 64
    raw = {
        "model": model,
        "optim": {"kind": "adamw", "lr": 1e-3},
        "data": {"corpus": a.corpus, "seq_len": a.seq, "batch_size": a.batch},
        "train": {"steps": a.steps + 1, "threads": threads, "device": a.device, **train},
    }
    if kind.startswith("hope"):
        raw["cms"] = {"token_periods": [4, 16]}
    return raw


def tokens_per_s(raw: dict, dp=None) -> float:
    t = Trainer(TrialConfig.from_dict(raw), dp=dp)
    sync = torch.cuda.synchronize if t.device.type == "cuda" else (lambda: None)
    t.train_step()
    sync()
    t0 = time.perf_counter()
    steps = raw["train"]["steps"] - 1
    for _ in range(steps):
        t.train_step()
    sync()
    return steps * raw["data"]["batch_size"] * raw["data"]["seq_len"] / (time.perf_counter() - t0)


def _dp_worker(rank: int, world: int, port: int, raw: dict, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from nlsweep.training.parallel import DDP_OPTIONS, DataParallel

    cuda = raw["train"]["device"] == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group(
        "nccl" if cuda else "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
    )
    torch.set_num_threads(raw["train"]["threads"])

    def ddp(m):
        return DistributedDataParallel(m, **DDP_OPTIONS)

    rate = tokens_per_s(raw, DataParallel(rank, world, ddp))
    if rank == 0:
        with open(out, "w") as f:
            f.write(str(rate))
    dist.destroy_process_group()


def data_parallel(a, world: int) -> tuple[float, float]:
    import socket
    import tempfile

    import torch.multiprocessing as mp

    cores = os.cpu_count() or 1
    one = tokens_per_s(config("transformer", a, cores))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.NamedTemporaryFile(suffix=".txt") as f:
        raw = config("transformer", a, max(1, cores // world))
        mp.spawn(_dp_worker, args=(world, port, raw, f.name), nprocs=world)
        many = float(Path(f.name).read_text())
    return one, many


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--workers", type=int, default=0)
    a = ap.parse_args()
    data = os.environ.get("NLSWEEP_DATA")
    a.corpus = "tinyshakespeare" if data and os.path.isdir(f"{data}/tinyshakespeare") else "pydoc"
    cores = os.cpu_count() or 1
    where = torch.cuda.get_device_name(0) if a.device == "cuda" else f"CPU, {cores} cores"
    print(f"device: {where}; torch {torch.__version__}; d_model {a.d_model}, {a.layers} layers, "
          f"batch {a.batch} x seq {a.seq}, {a.steps} timed steps, corpus {a.corpus}\n")  # fmt: skip
    modes = a.modes.split(",")
    print("| kind | " + " | ".join(f"{m} tokens/s" for m in modes) + " | bf16 / fp32 |")
    print("|---|" + "---:|" * (len(modes) + 1))
    for kind in a.kinds.split(","):
        rates = {m: tokens_per_s(config(kind, a, cores, **MODES[m])) for m in modes}
        ratio = rates["bf16"] / rates["fp32"] if {"bf16", "fp32"} <= rates.keys() else float("nan")
        print(f"| {kind} | " + " | ".join(f"{rates[m]:,.0f}" for m in modes) + f" | {ratio:.2f} |")
    if a.workers > 1:
        one, many = data_parallel(a, a.workers)
        print(f"\ntransformer, data parallel: 1 worker {one:,.0f} tokens/s, {a.workers} workers "
              f"{many:,.0f} tokens/s: {many / one:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
