"""The Ray Tune function trainable: one trial of the training loop in `nlsweep/train.py`.

Ray gives each trial the spec's `resources`; a trial given a GPU trains on it, else on CPU.
Trials sharing a GPU (fractional `gpu`) cap their CUDA memory to their share, so one trial
cannot starve the others. Metrics are passed to `tune.report` at every evaluation; the
driver (not this process) writes them to MLflow. Evaluations due a checkpoint
(`train.checkpoint_every`, and the last) carry the complete training state with them, and a
trial Ray restarts (after a retry, or a resumed sweep) continues from its newest checkpoint,
exactly where that left off.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import tempfile
import time

import ray
import torch
from ray import tune

from nlsweep import checkpoint
from nlsweep.runlog import GPU_KEY, WARNINGS
from nlsweep.runtime import describe_hardware
from nlsweep.spec import Spec, swept_values
from nlsweep.train import DIVERGED, Diverged, Trainer


def trial_device(spec: Spec, requested: str, gpu_ids: list) -> torch.device:
    """The device a trial trains on, from its config and the GPUs Ray assigned to it."""
    if requested == "cpu" or not gpu_ids:
        if requested == "cuda":
            raise RuntimeError("train.device is cuda but Ray assigned this trial no GPU")
        return torch.device("cpu")
    if not torch.cuda.is_available():
        # Ray's GPUs are bookkeeping; training on CPU here would pass silently for a GPU run.
        raise RuntimeError(
            f"resources.gpu: Ray gave this trial GPU {gpu_ids} (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES')}) on {socket.gethostname()}, but torch "
            "sees no CUDA device there; fix that node's CUDA, or set train.device: cpu"
        )
    if 0 < spec.resources.gpu < 1:
        torch.cuda.set_per_process_memory_fraction(spec.resources.gpu, 0)
    return torch.device("cuda", 0)


def run_trial(config: dict, spec: Spec) -> None:
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one INFO line per checkpoint
    cfg = spec.trial_config(swept_values(spec, config))
    torch.set_num_threads(cfg.train.threads or max(1, int(spec.resources.cpu)))
    device = trial_device(spec, cfg.train.device, ray.get_gpu_ids())
    trainer = Trainer(cfg, device=device)
    resumed = tune.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as folder:
            checkpoint.restore(trainer, folder)
    hardware = describe_hardware(device, share=spec.resources.gpu)
    gpus = ray.get_gpu_ids()
    placement = f"ray {gpus} CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}"
    # Seconds this trial (this attempt) spent in reports with and without a checkpoint (the
    # difference per report is the checkpoint's cost; both include Ray's hand-over); reported
    # one evaluation late, since a report's own time is known only once it returns.
    spent = {"checkpoint_s": 0.0, "checkpoints": 0.0, "report_s": 0.0, "reports": 0.0}
    try:
        for metrics in trainer.run():
            metrics = {
                **metrics,
                **{f"perf/{k}": v for k, v in spent.items()},
                "hardware": hardware,
                **({GPU_KEY: placement} if gpus else {}),
            }
            if trainer.step == cfg.train.steps:  # mechanisms that never acted, for run tags
                metrics[WARNINGS] = json.dumps(trainer.warnings())
            t0 = time.perf_counter()
            if cfg.train.checkpoint_due(trainer.step):
                with tempfile.TemporaryDirectory(prefix="nlsweep-ckpt-") as folder:
                    checkpoint.save(trainer, folder)
                    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
                kind = "checkpoint"
            else:
                tune.report(metrics)
                kind = "report"
            spent[f"{kind}_s"] += time.perf_counter() - t0
            spent[f"{kind}s"] += 1
    except Diverged as e:
        # A result, not a crash: the trial ends now, is not retried, and the search sees the
        # worst possible value of its objective.
        worst = math.inf if spec.mode == "min" else -math.inf
        tune.report({"step": e.step, spec.metric: worst, DIVERGED: str(e), "hardware": hardware})


def make_trainable(spec: Spec):
    """`run_trial` bound to the spec and wrapped with the spec's per-trial resources."""
    fn = tune.with_parameters(run_trial, spec=spec)
    return tune.with_resources(fn, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
