"""Step time of the surprise objective relative to training without it (CPU by default).

    python bench/surprise_overhead.py [--sizes quickstart report] [--steps 6] [--threads 2]

Prints, per model size, the median training-step time without surprise and with it, and the
ratio to the baseline: `target: detached` on one level (one backward pass, a hook adds the
aux gradient), on two and on all three levels (an extra partial pass above the lowest level),
and `target: differentiable` on all three (second-order graph). Configurations run
interleaved, step by step, so drift in machine speed hits all of them alike. The earlier
implementation paid 1.3x-1.7x; the aim is <= 1.25x detached.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from nlsweep.data.config import DataConfig
from nlsweep.data.load import load_corpus
from nlsweep.training.trainer import Trainer
from nlsweep.training.trial import TrialConfig

SIZES = {
    # the quickstart's model and batch
    "quickstart": {
        "model": {"d_model": 64, "d_ff": 128},
        "data": {"seq_len": 64, "batch_size": 16},
    },
    # the earlier report's model and batch (d=256, hidden 512, batch 64, seq 512)
    "report": {"model": {"d_model": 256, "d_ff": 512}, "data": {"seq_len": 512, "batch_size": 64}},
}
ALL = {"fast": 0.05, "medium": 0.05, "slow": 0.05}
MODES = {
    "none": None,
    "detached medium": {"weights": {"medium": 0.05}},
    "detached fast+medium": {"weights": {"fast": 0.05, "medium": 0.05}},
    "detached all": {"weights": ALL},
    "differentiable all": {"weights": ALL, "target": "differentiable"},
}


def trainer(size: str, surprise, corpus) -> Trainer:
    raw = {
        "model": {"kind": "nested_lstm", **SIZES[size]["model"]},
        "cms": {"periods": {"fast": 1, "medium": 4, "slow": 16}},
        "data": {"corpus": "pydoc", **SIZES[size]["data"]},
        "train": {"steps": 10**6, "seed": 0},
    }
    if surprise:
        raw["surprise"] = surprise
    return Trainer(TrialConfig.from_dict(raw), device=torch.device("cpu"), corpus=corpus)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--steps", type=int, default=6, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    corpus = load_corpus(DataConfig(corpus="pydoc"))
    print(f"torch {torch.__version__}, {args.threads} threads, {args.steps} timed steps "
          f"after {args.warmup} warm-up steps, median step time")  # fmt: skip
    print(f"{'size':<12}{'surprise':<22}{'step ms':>10}{'ratio':>8}")
    for size in args.sizes:
        trainers = {mode: trainer(size, cfg, corpus) for mode, cfg in MODES.items()}
        times: dict[str, list[float]] = {mode: [] for mode in MODES}
        for i in range(args.warmup + args.steps):
            for mode, t in trainers.items():
                t0 = time.perf_counter()
                t.train_step()
                if i >= args.warmup:
                    times[mode].append(time.perf_counter() - t0)
        base = statistics.median(times["none"])
        for mode in MODES:
            med = statistics.median(times[mode])
            print(f"{size:<12}{mode:<22}{1000 * med:>10.1f}{med / base:>8.2f}")


if __name__ == "__main__":
    main()
