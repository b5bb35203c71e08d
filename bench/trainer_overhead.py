"""The `Trainer` step's own overhead: its tokens/s over a nanoGPT-style loop on the same model.

    python bench/trainer_overhead.py [--widths 32,128] [--layers 2] [--batch 16] [--seq 64]
                                     [--steps 25] [--rounds 7] [--threads 1]

For each width, a transformer trial (Adam, lr 1e-3, Tiny Shakespeare's characters when
$NLSWEEP_DATA has it, else pydoc) is built as a `Trainer`, and a copy of its model with the
same weights gets the loop nanoGPT's train.py runs: a batch of random windows of the training
ids, forward, cross-entropy, `zero_grad(set_to_none=True)`, backward, `Adam.step()`, and the
loss read once per step (as the trainer does for its divergence check). `--rounds` rounds each
time `--steps` steps of each, each going first in turn; printed per width: each side's
tokens/s in its fastest round and the median and range of the per-round ratio trainer / loop.
The trainer steps Adam with torch's fused kernel (models/optim.py), nanoGPT's loop on a CPU
with the per-tensor one (nanoGPT fuses on CUDA only); the last columns give the loop the fused
kernel too, so that their ratio is the trainer's bookkeeping alone (state handling, the CMS
optimizer's levels and counters, metrics): the model and the optimizer are then the same.
A figure to read, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nlsweep.training.trainer import Trainer  # noqa: E402
from nlsweep.training.trial import TrialConfig  # noqa: E402


def corpus() -> dict:
    data = os.environ.get("NLSWEEP_DATA")
    if data and (Path(data) / "tinyshakespeare").is_dir():
        return {"corpus": "tinyshakespeare"}
    return {"corpus": "pydoc"}


def trainer(width: int, a) -> Trainer:
    cfg = TrialConfig.from_dict({
        "model": {"kind": "transformer", "d_model": width, "n_layers": a.layers,
                  "n_heads": max(1, width // 16), "d_ff": 4 * width},
        "optim": {"kind": "adam", "lr": 1e-3},
        "data": {**corpus(), "seq_len": a.seq, "batch_size": a.batch},
        "train": {"steps": 10**9, "eval_every": 10**9, "seed": 0, "threads": a.threads},
    })  # fmt: skip
    return Trainer(cfg)


class Loop:
    """nanoGPT's training loop around a model: random windows, forward, loss, backward, step."""

    def __init__(self, model: torch.nn.Module, ids: torch.Tensor, a, fused: bool = False):
        self.model, self.ids, self.a = model, ids, a
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused or None)
        self.g = torch.Generator().manual_seed(0)

    def batch(self):
        ix = torch.randint(len(self.ids) - self.a.seq - 1, (self.a.batch,), generator=self.g)
        x = torch.stack([self.ids[i : i + self.a.seq] for i in ix])
        y = torch.stack([self.ids[i + 1 : i + 1 + self.a.seq] for i in ix])
        return x, y

    def step(self) -> float:
        x, y = self.batch()
        logits, _ = self.model(x)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.item()


def timed(step, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="32,128")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    tokens = a.steps * a.batch * a.seq
    print(f"Trainer step vs a nanoGPT-style loop, same model and weights: {a.layers} layers, "
          f"batch {a.batch} x {a.seq}, {a.steps} steps x {a.rounds} rounds, "
          f"{a.threads} thread(s), torch {torch.__version__}")  # fmt: skip
    print("| d_model | Trainer tok/s | loop tok/s | ratio median | ratio range "
          "| loop, fused Adam, tok/s | ratio median | ratio range |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for width in (int(w) for w in a.widths.split(",")):
        t = trainer(width, a)
        ids = t.batcher.x.reshape(-1).long() if hasattr(t.batcher, "x") else None
        loops = {"l": Loop(copy.deepcopy(t.model), ids, a),
                 "f": Loop(copy.deepcopy(t.model), ids, a, fused=True)}  # fmt: skip
        sides = [("t", t.train_step), *((k, lp.step) for k, lp in loops.items())]
        for _, f in sides:
            f()  # allocation, first-call costs
        ratios, best = {"l": [], "f": []}, {"t": 0.0, "l": 0.0, "f": 0.0}
        for r in range(a.rounds):
            order = sides[r % 3 :] + sides[: r % 3]  # each side first in turn
            times = dict((k, timed(f, a.steps)) for k, f in order)
            for k in best:
                best[k] = max(best[k], tokens / times[k])
            for k in ratios:
                ratios[k].append(times[k] / times["t"])
        cells = [f"{best['t']:,.0f}"]
        for k in ("l", "f"):
            rs = ratios[k]
            cells += [f"{best[k]:,.0f}", f"{statistics.median(rs):.3f}",
                      f"{min(rs):.3f}-{max(rs):.3f}"]  # fmt: skip
        print(f"| {width} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
