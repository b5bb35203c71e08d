"""Why a multi-head Titans memory cannot reach its FLOP bound at small widths: the batched matrix
products of one memory against those of H memories side by side, at the same width.

    python bench/memory_heads_gemm.py [--batch 16] [--chunk 16] [--width 32] [--heads 4]
                                      [--rounds 7] [--reps 2000] [--threads 1]

The memory's products are batched over rows: its reads and gradients at one head are (B, n, d)
times (B, d, d); with H heads each head is a row of the batch, (B H, n, d/H) times
(B H, d/H, d/H), H times fewer FLOPs. bench/memory_kinds.py's bound assumes time proportional
to FLOPs (the transformer's arithmetic efficiency); this prints what torch's batched product
(`@`, MKL/oneDNN on this CPU) does at those shapes: microseconds per product and GFLOP/s, the
fastest of `--rounds` interleaved rounds of `--reps` products each. A figure to read, not a
test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import time

import torch


def timed(a: torch.Tensor, b: torch.Tensor, reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return (time.perf_counter() - t0) / reps


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    B, n, d, H = a.batch, a.chunk, a.width, a.heads
    shapes = {1: (B, n, d, d), H: (B * H, n, d // H, d // H)}
    pairs = {h: (torch.randn(r, m, k), torch.randn(r, k, c)) for h, (r, m, k, c) in shapes.items()}
    best = {h: float("inf") for h in pairs}
    for x, y in pairs.values():
        timed(x, y, 50)  # first-call costs
    for r in range(a.rounds):
        for h in sorted(pairs, reverse=bool(r % 2)):
            best[h] = min(best[h], timed(*pairs[h], a.reps))
    print(f"batched products of the memory, {a.threads} thread(s), torch {torch.__version__}")
    print("| heads | product | MFLOP | microseconds | GFLOP/s |")
    print("|---:|---|---:|---:|---:|")
    for h, (r, m, k, c) in shapes.items():
        flop = 2 * r * m * k * c
        print(f"| {h} | ({r}, {m}, {k}) @ ({r}, {k}, {c}) | {flop / 1e6:.3f} | "
              f"{best[h] * 1e6:.1f} | {flop / best[h] / 1e9:.2f} |")  # fmt: skip
    print(f"\n{H} heads: {1 / H:.2f}x the FLOPs in {best[H] / best[1]:.2f}x the time")


if __name__ == "__main__":
    main()
