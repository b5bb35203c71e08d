"""The Ray Tune function trainable: one trial of the training loop in `nlsweep/train.py`.

Ray gives each trial the spec's `resources`; a trial given a GPU trains on it, else on CPU.
Trials sharing a GPU (fractional `gpu`) cap their CUDA memory to their share, so one trial
cannot starve the others. Metrics are passed to `tune.report` at every evaluation; the
driver (not this process) writes them to MLflow.
"""

from __future__ import annotations

import math

import ray
import torch
from ray import tune

from nlsweep.spec import Spec, swept_values
from nlsweep.train import DIVERGED, Diverged, Trainer, describe_hardware


def trial_device(spec: Spec, requested: str, gpu_ids: list) -> torch.device:
    """The device a trial trains on, from its config and the GPUs Ray assigned to it."""
    if requested == "cpu" or not gpu_ids:
        if requested == "cuda":
            raise RuntimeError("train.device is cuda but Ray assigned this trial no GPU")
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"Ray assigned GPUs {gpu_ids} but torch sees no CUDA device")
    if 0 < spec.resources.gpu < 1:
        torch.cuda.set_per_process_memory_fraction(spec.resources.gpu, 0)
    return torch.device("cuda", 0)


def run_trial(config: dict, spec: Spec) -> None:
    cfg = spec.trial_config(swept_values(spec, config))
    torch.set_num_threads(cfg.train.threads or max(1, int(spec.resources.cpu)))
    device = trial_device(spec, cfg.train.device, ray.get_gpu_ids())
    trainer = Trainer(cfg, device=device)
    hardware = describe_hardware(device, share=spec.resources.gpu)
    try:
        for metrics in trainer.run():
            tune.report({**metrics, "hardware": hardware})
    except Diverged as e:
        # A result, not a crash: the trial ends now, is not retried, and the search sees the
        # worst possible value of its objective.
        worst = math.inf if spec.mode == "min" else -math.inf
        tune.report({"step": e.step, spec.metric: worst, DIVERGED: str(e), "hardware": hardware})


def make_trainable(spec: Spec):
    """`run_trial` bound to the spec and wrapped with the spec's per-trial resources."""
    fn = tune.with_parameters(run_trial, spec=spec)
    return tune.with_resources(fn, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
