"""The deep-momentum Titans memory (`model.memory_optimizer: deep_momentum`): its closed form
against the token loop that forms every W_t, forward and backward.

    python bench/deep_memory.py [--width 32] [--batch 16] [--tokens 64] [--chunk 16]
                                [--hidden 16] [--rounds 15] [--steps 5]

One memory (the defaults of `model:` otherwise: depth 2, momentum and forgetting on), one
thread, the hope_vs_titan trial's sizes by default. Each round times `--steps` forward and
backward passes of `forward` (the closed form: the momentum memory's rank-one row sums, the
dual form over 2n writes per chunk, the `_Sigmas` loop of h-vectors) and of
`reference_forward` (the loop over tokens that forms each W_t and steps
`deep_momentum_step` on it), in turn; printed: each one's best round, per pass, and their
ratio, with the largest difference of their read-outs (float32). A figure to read, not a
test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.deep_memory import DeepMomentumMemory  # noqa: E402
from models.titans_memory import MemoryConfig  # noqa: E402


def timed(fn, x: torch.Tensor, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        fn(x)[0].square().sum().backward()
    return (time.perf_counter() - t0) / steps


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = MemoryConfig(memory_chunk=a.chunk, memory_optimizer="deep_momentum",
                       memory_deep_hidden=a.hidden)  # fmt: skip
    mem = DeepMomentumMemory(a.width, cfg).train()
    x = torch.randn(a.batch, a.tokens, a.width)
    ways = {"closed form": mem.forward, "token loop": mem.reference_forward}
    for fn in ways.values():
        timed(fn, x, 1)
    best = dict.fromkeys(ways, float("inf"))
    for _ in range(a.rounds):
        for name, fn in ways.items():
            best[name] = min(best[name], timed(fn, x, a.steps))
    with torch.no_grad():
        diff = float((mem(x)[0] - mem.reference_forward(x)[0]).abs().max())
    print(f"deep_momentum memory: width {a.width}, batch {a.batch} x {a.tokens} tokens, chunk "
          f"{a.chunk}, h {a.hidden}; one thread, best of {a.rounds} interleaved rounds of "
          f"{a.steps} forward + backward passes")  # fmt: skip
    for name, t in best.items():
        print(f"{name}: {t * 1e3:.2f} ms")
    print(f"closed form / token loop time: {best['closed form'] / best['token loop']:.3f}; "
          f"read-outs differ by at most {diff:.2g}")  # fmt: skip


if __name__ == "__main__":
    main()
