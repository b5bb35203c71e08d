"""`nlsweep run SPEC --dry-run --probe`: measure the sweep's largest trial before it runs.

The largest trial is the point of the space (every value a grid or choice lists, both ends of
a range) whose model has the most parameters, ties broken by tokens per batch. It trains for
a few steps on one device, here, without Ray or MLflow: the device a trial would get (a GPU
when the spec asks for one and this machine has it, else the CPU), its precision and compile
settings. The peak memory it measures says how many such trials fit on one GPU and whether
the spec's `resources.gpu` share holds it; on CPU it is the process's peak resident set.
"""

from __future__ import annotations

import itertools
import math
import time

import torch

from models.common import param_count
from nlsweep.config.space import candidate_values
from nlsweep.spec import Spec
from nlsweep.training.runtime import memory_peaks
from nlsweep.training.trainer import Trainer
from nlsweep.training.trial import TrialConfig

MAX_POINTS = 512  # candidate points built to find the largest (each builds a model)
HEADROOM = 1.2  # a share must hold the measured peak plus allocator slack and fragmentation


def largest_trial(spec: Spec) -> tuple[dict, TrialConfig]:
    """(swept values, trial config) of the candidate point with the most work per step."""
    axes = {p: candidate_values(d) for p, d in spec.space.items()}
    best, best_key = ({}, spec.base), (-1, -1)
    for combo in itertools.islice(itertools.product(*axes.values()), MAX_POINTS):
        values = dict(zip(axes, combo))
        cfg = spec.trial_config(values)
        key = (param_count(_model(cfg)), cfg.data.batch_size * cfg.data.seq_len)
        if key > best_key:
            best, best_key = (values, cfg), key
    return best if best_key[0] >= 0 else ({}, spec.base)


def _model(cfg: TrialConfig) -> torch.nn.Module:
    from models.capabilities import build_model
    from models.registry import model_kind

    kind = model_kind(cfg.model.kind)
    try:
        with torch.device("meta"):  # counts parameters without allocating them
            return build_model(kind, cfg.model, 256, cfg.cms, cfg.teach)  # a byte-sized vocab
    except (NotImplementedError, RuntimeError):  # an initialisation meta tensors lack
        return build_model(kind, cfg.model, 256, cfg.cms, cfg.teach)


def probe(spec: Spec, steps: int = 5, out=print) -> dict[str, float]:
    """Train the largest trial `steps` steps here; print and return what it measured."""
    values, cfg = largest_trial(spec)
    gpu = spec.resources.gpu > 0 and torch.cuda.is_available() and cfg.train.device != "cpu"
    device = torch.device("cuda", 0) if gpu else torch.device("cpu")
    if not gpu:
        torch.set_num_threads(cfg.train.threads or max(1, int(spec.resources.cpu)))
    label = ", ".join(f"{k}={v}" for k, v in values.items()) or "the base config"
    out(f"probe: largest trial ({label}) for {steps} steps on {device}, estimate only")
    trainer = Trainer(cfg, device=device)
    if gpu:
        torch.cuda.reset_peak_memory_stats(device)
    trainer.train_step()  # the first step pays for allocation and compilation
    if gpu:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps - 1):
        trainer.train_step()
    if gpu:
        torch.cuda.synchronize(device)
    step_s = (time.perf_counter() - t0) / max(steps - 1, 1)
    peaks = memory_peaks(device)
    found = {
        "params": float(param_count(trainer.model)),
        "step_s": step_s,
        "tokens_per_s": cfg.data.batch_size * cfg.data.seq_len / step_s,
        **peaks,
    }
    rss = peaks["perf/cpu_rss_peak_mb"]
    out(
        f"  {found['params']:,.0f} parameters; {step_s * 1000:.1f} ms/step "
        f"({found['tokens_per_s']:,.0f} tokens/s); peak CPU RSS {rss:,.0f} MiB"
    )
    if gpu:
        found.update(_fit(spec, device, peaks["perf/gpu_mem_peak_mb"], out))
    elif spec.resources.gpu > 0:
        out("  no GPU here: the GPU peak and the share check need a machine with one")
    return found


def _fit(spec: Spec, device: torch.device, peak_mb: float, out) -> dict[str, float]:
    total = torch.cuda.get_device_properties(device).total_memory / 2**20
    share = spec.resources.gpu
    fit = math.floor(total / (peak_mb * HEADROOM))
    out(
        f"  peak GPU memory {peak_mb:,.0f} MiB of {total:,.0f} MiB: about {fit} such trials "
        f"fit on one GPU (with {HEADROOM - 1:.0%} headroom)"
    )
    if share < 1 and share * total < peak_mb * HEADROOM:
        out(
            f"  resources.gpu {share:g} ({share * total:,.0f} MiB) is too small for this trial; "
            f"use at least {math.ceil(peak_mb * HEADROOM / total * 100) / 100:g}"
        )
    return {"gpu_total_mb": total, "trials_per_gpu": float(fit)}
