"""Where and how a trial runs: its device, a description of the hardware for reports, the
global RNG states (python, numpy, torch, CUDA) as plain data that checkpoints exactly, how
a diverging trial stops, and how its forward compiles.
"""

from __future__ import annotations

import gc
import os
import platform
import random
import resource
import weakref

import numpy as np
import torch

from models.errors import ConfigError


def describe_hardware(device: torch.device, share: float = 0.0) -> str:
    """Where a trial ran, for reports: the GPU model, or the CPU model and torch threads."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"GPU {name}" + (f" ({share:g} share)" if 0 < share < 1 else "")
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU {model} ({os.cpu_count()} cores), torch threads: {torch.get_num_threads()}"


def memory_peaks(device: torch.device) -> dict[str, float]:
    """Peak memory so far, in MiB: this process's resident set (CPU), and on a GPU what
    torch allocated on it (what a share of the GPU has to hold)."""
    out = {"perf/cpu_rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["perf/gpu_mem_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def out_of_share(device: torch.device, share: float) -> str:
    """The one line for a trial that ran out of its fraction of a GPU."""
    total = torch.cuda.get_device_properties(device).total_memory / 2**20
    peak = torch.cuda.max_memory_reserved(device) / 2**20
    return (
        f"resources.gpu: {share:g} of this {total:.0f} MiB GPU ({share * total:.0f} MiB) is "
        f"too small for this trial (it had reserved {peak:.0f} MiB when an allocation failed); "
        "raise the share, or measure with nlsweep run SPEC --dry-run --probe"
    )


def pick_device(cfg) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def check_precision(precision: str, device: torch.device, model: torch.nn.Module) -> None:
    """bf16 on a CPU whose oneDNN has no bf16 kernels (no AVX-512 BF16 or AMX) cannot run
    an `nn.LSTM` (torch raises mid-step); refused up front in one line instead."""
    if precision != "bf16" or device.type != "cpu":
        return
    if not any(isinstance(m, torch.nn.LSTM) for m in model.modules()):
        return
    if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return
    raise ConfigError("train.precision", "fp32 on this CPU: its oneDNN has no bf16 LSTM "
                      "kernel (no AVX-512 BF16 or AMX); bf16 needs one, or a GPU")  # fmt: skip


# The trainers of this process whose forward is compiled and still alive.
_COMPILED: weakref.WeakSet = weakref.WeakSet()


def compile_forward(forward: torch.nn.Module, owner: object) -> torch.nn.Module:
    """`torch.compile(forward)` for `owner`'s training, as a fresh process would compile it.
    Every trainer's forward is one code object (`Forward.forward`), whose graphs dynamo
    caches together, across trainers: in a Ray actor reused for trial after trial
    (`reuse_actors`), each trial with new shapes recompiled the last one's graph with
    dynamic shapes, and past `recompile_limit` (8) graphs the forward silently ran eagerly
    (one logged warning; measured: the ninth compiled model of one process ran at its eager
    speed). So dynamo is reset when no compiled trainer is alive (the trials before are
    gone), and a process that keeps more compiled models than the limit allows (a notebook,
    `bench/memory_kinds.py` raises the limit) gets an error, not an eager run."""
    if _COMPILED:
        gc.collect()  # a trainer of an ended trial may wait for the cycle collector
    if not _COMPILED:
        torch._dynamo.reset()
    _COMPILED.add(owner)
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    return torch.compile(forward)


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(sd: dict) -> None:
    random.setstate((sd["python"][0], tuple(sd["python"][1]), sd["python"][2]))
    name, keys, *rest = sd["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(sd["torch"])
    if sd["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(sd["cuda"])


DIVERGED = "diverged"
"""Result key of a trial that stopped because its loss diverged (the value says how)."""


class Diverged(FloatingPointError):
    """The training loss became NaN, inf, or larger than train.diverge_above."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"training loss {loss:.6g} at step {step}")
        self.step, self.loss = step, loss

    def __reduce__(self):
        return (Diverged, (self.step, self.loss))
