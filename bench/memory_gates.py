"""How much `model.memory_gates` changes the memory: token against chunk gates.

    python bench/memory_gates.py [--width 32] [--tokens 64] [--seeds 5] [--chunks 1,4,16]

For each chunk size and seed, one memory (the defaults of `model:`: depth 2, momentum and
forgetting on) is built twice with the same initial weights, once per reading, and reads the
same random stream of `--tokens` tokens (4 rows). Printed per chunk size: the relative
difference ||a - b|| / ||a|| (a: token gates) of the memory W_1 and the momentum S_1 after the
stream, both at a chunk end, and of the read-outs, as min-max over the seeds. At chunk 1 the
readings are one recurrence, so the first row is rounding alone. A figure to read, not a
test: nothing here asserts it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.titans_memory import MemoryConfig, NeuralMemory  # noqa: E402


def run(gates: str, chunk: int, width: int, x: torch.Tensor, seed: int):
    torch.manual_seed(seed)
    mem = NeuralMemory(width, MemoryConfig(memory_chunk=chunk, memory_gates=gates)).double()
    with torch.no_grad():
        return mem(x)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--chunks", default="1,4,16")
    a = ap.parse_args(argv)
    print(f"memory_gates token vs chunk: width {a.width}, {a.tokens} tokens, seeds 0-{a.seeds - 1}")
    print("| chunk | W_1 after the stream | S_1 after the stream | read-outs |")
    print("|---:|---:|---:|---:|")
    for chunk in (int(c) for c in a.chunks.split(",")):
        rows = []
        for seed in range(a.seeds):
            g = torch.Generator().manual_seed(1000 + seed)
            x = torch.randn(4, a.tokens, a.width, dtype=torch.double, generator=g)
            (ya, sa), (yb, sb) = (run(m, chunk, a.width, x, seed) for m in ("token", "chunk"))
            rows.append((rel(sa[0], sb[0]), rel(sa[2], sb[2]), rel(ya, yb)))
        cells = [f"{min(c):.2g}-{max(c):.2g}" for c in zip(*rows)]
        print(f"| {chunk} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
