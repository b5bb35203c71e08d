"""Checkpoint cost as a fraction of trial time, for a spec's base trial (CPU by default).

    python bench/checkpoint_overhead.py [SPEC] [--repeats 3] [--threads 1]

Runs the spec's base config as one trial (the quickstart by default: 300 steps, an
evaluation every 100) and, at every evaluation the sweep would checkpoint
(`train.checkpoint_every`), does what a sweep trial does: `nlsweep.training.checkpoint.save` into a
fresh temporary folder, then copies the folder into a storage folder, as Ray does when it
persists a checkpoint to local storage. Prints the trial's training + evaluation seconds, the
checkpoint seconds, and their ratio, per repeat and as the median. Ray's own hand-over of the
report is not included: every evaluation pays it, checkpoint or not.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from nlsweep.spec import load_spec
from nlsweep.training import checkpoint
from nlsweep.training.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent


def one_trial(spec, storage: Path) -> tuple[float, float, int, int]:
    """(trial seconds without checkpoints, checkpoint seconds, checkpoints, bytes of one)."""
    trainer = Trainer(spec.base, device=torch.device("cpu"))
    tc = spec.base.train
    spent, saved, size = 0.0, 0, 0
    start = time.perf_counter()
    for _ in trainer.run():
        if not tc.checkpoint_due(trainer.step):
            continue
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            checkpoint.save(trainer, folder)
            shutil.copytree(folder, storage / f"checkpoint_{saved:06d}")
        spent += time.perf_counter() - t0
        saved += 1
        size = (storage / f"checkpoint_{saved - 1:06d}" / checkpoint.CHECKPOINT_FILE).stat().st_size
    total = time.perf_counter() - start
    return total - spent, spent, saved, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec", nargs="?", default=str(ROOT / "search_spaces" / "quickstart.yaml"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a sweep trial: 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = load_spec(args.spec)
    tc = spec.base.train
    print(
        f"{spec.name}: {tc.steps} steps, evaluation every {tc.eval_every}, checkpoint every "
        f"{tc.checkpoint_every or tc.eval_every}; torch threads {args.threads}"
    )
    ratios = []
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory() as storage:
            trial, spent, saved, size = one_trial(spec, Path(storage))
        ratios.append(spent / trial)
        print(
            f"repeat {r}: trial {trial:.2f} s, {saved} checkpoints of {size / 1024:.0f} KiB "
            f"in {1000 * spent:.1f} ms = {100 * spent / trial:.2f}% of trial time"
        )
    print(f"median overhead: {100 * statistics.median(ratios):.2f}% of trial time")


if __name__ == "__main__":
    main()
