"""The Ray Tune function trainable: one trial of the training loop in `nlsweep/training/trainer.py`.

A trial with `resources.workers: N > 1` runs as N data-parallel workers under Ray Train: the
Tune trial launches a `TorchTrainer` (DDP over gloo on CPU, NCCL on GPUs; see
`nlsweep/training/parallel.py` for what is reduced), whose rank 0 reports through Ray's
`TuneReportCallback`. Ray Train keeps that run's checkpoints under the trial's experiment
folder (`train/TRIAL_ID`) and, after a failed worker or a resumed sweep, restarts every
worker from the newest one.

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
import platform
import socket
import tempfile
import time

import ray
import torch
from ray import tune

from nlsweep.evaluation import EVAL_WARNINGS, eval_trainer
from nlsweep.execution.preemption import CheckpointRequest, checkpoint_only_result
from nlsweep.execution.runlog import FALLBACK, GPU_KEY, STORAGE_FULL, VERSIONS, WARNINGS
from nlsweep.spec import Spec, swept_values
from nlsweep.tracking.store import disk_full
from nlsweep.training import checkpoint
from nlsweep.training.runtime import DIVERGED, Diverged, describe_hardware, out_of_share
from nlsweep.training.trainer import CHECKPOINT_ONLY, Trainer


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


# What `Trial.restore` did in this trial process in place of Tune's recorded checkpoint, for
# `run_trial` (which Tune then starts in a thread of the same process) to put in a run tag.
_restored_instead: str | None = None


def run_trial(config: dict, spec: Spec) -> None:
    global _restored_instead
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one INFO line per checkpoint
    spec.import_plugins()  # what they register, in this worker too
    cfg = spec.trial_config(swept_values(spec, config))
    torch.set_num_threads(cfg.train.threads or max(1, int(spec.resources.cpu)))
    device = trial_device(spec, cfg.train.device, ray.get_gpu_ids())
    trainer = Trainer(cfg, device=device)
    instead, _restored_instead = _restored_instead, None
    _train(trainer, spec, tune.get_checkpoint(), tune.report, tune.Checkpoint, note=instead)


def _train(
    trainer: Trainer,
    spec: Spec,
    resumed,
    report,
    checkpoint_cls,
    replay: bool = False,
    note: str | None = None,
) -> None:
    """Restore, train and report one trial (or one data-parallel worker of it). `replay`:
    report the restored checkpoint's own evaluation again first (see `_worker_loop`).
    `note`: what was restored in place of Tune's recorded checkpoint (a run tag)."""
    cfg, device, rank = trainer.cfg, trainer.device, trainer.dp.rank
    fallback = restore_newest_readable(trainer, resumed, checkpoint_cls) if resumed else None
    fallback = "; ".join(n for n in (note, fallback) if n) or None
    hardware = describe_hardware(device, share=spec.resources.gpu)
    if trainer.dp.active:
        hardware = f"{trainer.dp.world} data-parallel workers, each {hardware}"
    if replay and resumed is not None and trainer.history:
        last = trainer.history[-1] if rank == 0 else {"step": trainer.step}
        report({**last, "hardware": hardware, **({FALLBACK: fallback} if fallback else {})})
        fallback = None
    versions = f"torch {torch.__version__}, python {platform.python_version()}"
    gpus = ray.get_gpu_ids()
    placement = f"ray {gpus} CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}"
    # Seconds this trial (this attempt) spent in reports with and without a checkpoint (the
    # difference per report is the checkpoint's cost; both include Ray's hand-over); reported
    # one evaluation late, since a report's own time is known only once it returns.
    spent = {"checkpoint_s": 0.0, "checkpoints": 0.0, "report_s": 0.0, "reports": 0.0}
    # A stop signal's checkpoint request (`preemption.py`); data-parallel workers would have
    # to agree on the step, so they keep to their periodic checkpoints.
    asked = None if trainer.dp.active else CheckpointRequest(spec.name)
    try:
        for metrics in trainer.run(save_now=asked):
            if metrics.get(CHECKPOINT_ONLY):
                result = checkpoint_only_result(trainer.step, spec.metric, trainer.history)
                _report_checkpoint(trainer, {**result, "hardware": hardware}, report,
                                   checkpoint_cls)  # fmt: skip
                continue
            metrics = {
                **metrics,
                **{f"perf/{k}": v for k, v in spent.items()},
                "hardware": hardware,
                VERSIONS: versions,
                **({GPU_KEY: placement} if gpus else {}),
            }
            if trainer.step == cfg.train.steps:  # mechanisms that never acted, for run tags
                metrics[WARNINGS] = json.dumps(trainer.warnings())
                if spec.eval is not None and rank == 0:  # lm-eval's tasks, before the end
                    metrics.update(eval_trainer(trainer, spec.eval))
                    skipped = json.loads(metrics.pop(EVAL_WARNINGS))
                    metrics[WARNINGS] = json.dumps({**json.loads(metrics[WARNINGS]), **skipped})
            if fallback:  # said with the first result after the restore (a run tag)
                metrics[FALLBACK], fallback = fallback, None
            t0 = time.perf_counter()
            if cfg.train.checkpoint_due(trainer.step):
                _report_checkpoint(trainer, metrics, report, checkpoint_cls)
                kind = "checkpoint"
            else:
                report(metrics)
                kind = "report"
            spent[f"{kind}_s"] += time.perf_counter() - t0
            spent[f"{kind}s"] += 1
    except torch.cuda.OutOfMemoryError:
        if device.type == "cuda" and 0 < spec.resources.gpu < 1:
            raise RuntimeError(out_of_share(device, spec.resources.gpu)) from None
        raise
    except Diverged as e:
        # A result, not a crash: the trial ends now, is not retried, and the search sees the
        # worst possible value of its objective.
        worst = math.inf if spec.mode == "min" else -math.inf
        report({"step": e.step, spec.metric: worst, DIVERGED: str(e), "hardware": hardware})


def _report_checkpoint(trainer: Trainer, metrics: dict, report, checkpoint_cls) -> None:
    state = trainer.state_dict()  # with several workers, all of them gather it
    with tempfile.TemporaryDirectory(prefix="nlsweep-ckpt-") as folder:
        if trainer.dp.rank == 0:
            checkpoint.save_state(state, folder)
        saved = checkpoint_cls.from_directory(folder) if trainer.dp.rank == 0 else None
        try:
            report(metrics, checkpoint=saved)  # Ray copies the checkpoint to storage first
        except OSError as e:
            if not disk_full(e):
                raise
            # Retrying a trial on a full disk only fails it: the driver stops the sweep at
            # once instead (exit 3, resumable), told by this report without a checkpoint.
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            report({**metrics, STORAGE_FULL: first})


def _checkpoint_folders(fs, trial_path: str) -> list[str]:
    """The `checkpoint_*` folders of one trial in storage, oldest first."""
    import pyarrow.fs

    found = fs.get_file_info(pyarrow.fs.FileSelector(trial_path, allow_not_found=True))
    return sorted(
        i.path for i in found
        if i.type == pyarrow.fs.FileType.Directory and i.base_name.startswith("checkpoint_")
    )  # fmt: skip


def kept_successor(fs, path: str) -> str | None:
    """For a checkpoint Tune recorded that is no longer (or no longer wholly) in storage: the
    oldest whole checkpoint of the same trial after it, else None.

    Tune deletes a trial's checkpoint beyond `num_to_keep` as soon as it registers a newer one,
    but saves (and uploads) its experiment state only afterwards, so a driver killed between
    the two leaves a state that names a deleted checkpoint, and Ray's restore of that trial
    fails at every retry. Tune registers a checkpoint only after the driver has processed its
    result (and the MLflow writer logged it), and deletes oldest first: the oldest surviving
    checkpoint after the recorded one is registered, so resuming from it loses no logged step
    and repeats only steps the writer skips."""
    path = path.rstrip("/")
    if _holds_checkpoint(fs, path):
        return None
    parent, name = path.rsplit("/", 1)
    later = [p for p in _checkpoint_folders(fs, parent) if p.rsplit("/", 1)[1] > name]
    later = [p for p in later if _holds_checkpoint(fs, p)]
    return later[0] if later else None


def _holds_checkpoint(fs, path: str) -> bool:
    """Whether a checkpoint folder in storage holds its file. Not whether the folder exists:
    on S3 a deletion cut short (or pyarrow's directory marker) leaves an empty folder that
    reads as present, and a later folder can be an upload the driver never registered."""
    import pyarrow.fs

    found = fs.get_file_info(f"{path}/{checkpoint.CHECKPOINT_FILE}")
    return found.type == pyarrow.fs.FileType.File


def restore_newest_readable(trainer: Trainer, resumed, checkpoint_cls) -> str | None:
    """Restore the newest checkpoint Ray gave this trial; if it cannot be read, the older
    ones Ray keeps beside it (`CheckpointConfig(num_to_keep=2)`), newest first. Returns
    what was skipped (for the run's tags), None when the newest one was fine."""
    try:
        with resumed.as_directory() as folder:
            checkpoint.restore(trainer, folder)
        return None
    except checkpoint.CheckpointError as e:
        failure = e
    fs, newest = resumed.filesystem, resumed.path.rstrip("/")
    parent, name = newest.rsplit("/", 1)
    older = [p for p in _checkpoint_folders(fs, parent) if p.rsplit("/", 1)[1] < name]
    for path in reversed(older):
        try:
            with checkpoint_cls(path, filesystem=fs).as_directory() as folder:
                checkpoint.restore(trainer, folder)
        except checkpoint.CheckpointError:
            continue
        skipped = path.rsplit("/", 1)[1]
        return f"{name} unreadable ({failure}); restored {skipped} (step {trainer.step})"
    raise failure


def run_parallel_trial(config: dict, spec: Spec) -> None:
    """One trial as `resources.workers` data-parallel workers on Ray Train."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    res = spec.resources
    storage = tune.get_context().get_storage()
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"config": config, "spec": spec},
        scaling_config=ScalingConfig(
            num_workers=res.workers,
            use_gpu=res.gpu > 0,
            resources_per_worker={"CPU": res.cpu, **({"GPU": res.gpu} if res.gpu else {})},
        ),
        run_config=RunConfig(
            # one Train run per trial, found again by its name when the trial restarts
            name=tune.get_context().get_trial_id(),
            storage_path=f"{storage.experiment_fs_path}/train",
            storage_filesystem=storage.storage_filesystem,
            failure_config=FailureConfig(max_failures=spec.max_failures),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()


def _worker_loop(loop_config: dict) -> None:
    """One worker of a data-parallel trial (Ray Train runs it in each worker process)."""
    import ray.train
    import ray.train.torch

    from nlsweep.training.parallel import DDP_OPTIONS, DataParallel

    for name in ("ray.train", "ray.tune"):  # Ray Train logs every report of every worker
        logging.getLogger(name).setLevel(logging.WARNING)
    spec: Spec = loop_config["spec"]
    spec.import_plugins()
    cfg = spec.trial_config(swept_values(spec, loop_config["config"]))
    torch.set_num_threads(cfg.train.threads or max(1, int(spec.resources.cpu)))
    gpus = ray.get_gpu_ids()
    device = trial_device(spec, cfg.train.device, gpus)
    if device.type == "cuda":
        device = ray.train.torch.get_device()  # this worker's GPU among those Ray gave

    def ddp(module):
        return ray.train.torch.prepare_model(
            module, move_to_device=False, parallel_strategy_kwargs=DDP_OPTIONS
        )

    trainer = Trainer(cfg, device=device, dp=DataParallel.from_process_group(ddp))
    # Ray Train registers a checkpoint on its own, before Tune's driver has taken the
    # evaluation that came with it: a driver that dies in between would lose that step's
    # metrics. The restored state carries them (its history); reporting them again costs
    # nothing when they did arrive (the MLflow writer skips steps it holds).
    _train(trainer, spec, ray.train.get_checkpoint(), ray.train.report, ray.train.Checkpoint,
           replay=True)  # fmt: skip


def make_trainable(spec: Spec):
    """`run_trial` bound to the spec and wrapped with the spec's per-trial resources."""
    res = spec.resources
    if res.workers > 1:
        # The trial itself only drives Ray Train, whose workers hold the CPUs and GPUs; Ray
        # needs a non-empty request for it, and a token of memory blocks no CPU.
        fn = tune.with_parameters(run_parallel_trial, spec=spec)
        return tune.with_resources(fn, {"cpu": 0, "memory": 2**20})
    return tune.with_resources(_trial_class(spec), {"cpu": res.cpu, "gpu": res.gpu})


def _trial_class(spec: Spec):
    """Tune's own trainable for `run_trial` (what Tune would wrap it in), restoring from the
    oldest surviving later checkpoint when the one Tune recorded was deleted (`kept_successor`)."""
    from ray.tune.trainable.function_trainable import wrap_function

    class Trial(wrap_function(tune.with_parameters(run_trial, spec=spec))):
        def restore(self, checkpoint_path):
            return super().restore(_surviving(checkpoint_path))

    return Trial


def _surviving(result):
    """Tune's restore argument, its checkpoint replaced by `kept_successor` where the recorded
    one is gone. Module-level on purpose: Ray ships the local `Trial` class by value, with its
    own copy of the globals, so only a function of this module sets this module's note."""
    global _restored_instead
    recorded = getattr(result, "checkpoint", None)
    instead = recorded and kept_successor(recorded.filesystem, recorded.path)
    if instead:
        result.checkpoint = tune.Checkpoint(instead, filesystem=recorded.filesystem)
        _restored_instead = (
            f"{recorded.path.rstrip('/').rsplit('/', 1)[1]} (Tune's record) was deleted "
            f"before Tune saved its state; restored {instead.rsplit('/', 1)[1]}"
        )
    return result
