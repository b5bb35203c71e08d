"""Titans and HOPE against the transformer at the hope_vs_titan size: training tokens/s as
ratios measured in one run, and each kind's peak memory per trial at larger widths.

    python bench/memory_kinds.py [--steps 20] [--widths 256,768] [--chunks 16,64]
                                 [--inner-chunk 16]

Speed: every variant of search_spaces/hope_vs_titan.yaml (its exact trial config, seed 0)
trains one untimed step, then `--steps` timed steps, in this process, one kind after the
other, so the ratios share the machine's state; the hope kinds also with their CMS chain
read in chunks of `--inner-chunk` tokens (cms.inner_chunk). Memory: each (kind, d_model,
memory_chunk) trains 2 steps in a fresh process at the spec's batch and sequence, d_ff =
4 d, and reports that process's peak resident set (CPU) or peak allocation (GPU), in MiB. A
memory whose chunk materialised one weight per token would grow with B x chunk x d^2; the
dual form grows with B x d^2 only, so the rows for two chunk sizes should match.
A figure to read, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from throughput import tokens_per_s  # bench/ is this script's first import path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "search_spaces" / "hope_vs_titan.yaml"


def trial(variant: str, steps: int, inner_chunk: int = 0, **model) -> dict:
    from nlsweep.config import to_dict
    from nlsweep.spec import load_spec

    spec = load_spec(SPEC, available={"CPU": float(os.cpu_count() or 1), "GPU": 0.0})
    raw = to_dict(spec.trial_config({"variant": variant, "train.seed": 0}))
    raw["model"].update(model)
    if inner_chunk:
        raw["cms"]["inner_chunk"] = inner_chunk
    raw["train"].update(steps=steps + 1, eval_every=steps + 1, device="auto")
    if not raw["model"]["kind"].startswith("hope"):
        raw.pop("teach")  # only the hope kinds take a teach section
    return raw


def peak_child(variant: str, d: int, chunk: int, inner_chunk: int = 0) -> None:
    """In a fresh process: 2 training steps, then the peak memory as JSON on stdout."""
    from nlsweep.runtime import Diverged, memory_peaks
    from nlsweep.train import Trainer, TrialConfig

    model = {"d_model": d, "d_ff": 4 * d, "n_heads": max(1, d // 64)}
    if variant in ("titans", "hope"):
        model["memory_chunk"] = chunk
    t = Trainer(TrialConfig.from_dict(trial(variant, 1, inner_chunk, **model)))
    note = ""
    try:
        t.train_step()
        t.train_step()
    except Diverged as e:  # the peak of the steps before still stands; say so
        note = f" (loss {e.loss:.3g} at step {e.step})"
    peaks = memory_peaks(t.device)
    mb = peaks.get("perf/gpu_mem_peak_mb", peaks["perf/cpu_rss_peak_mb"])
    print(json.dumps([mb, note]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--widths", default="256,768")
    ap.add_argument("--chunks", default="16,64")
    ap.add_argument("--kinds", default="transformer,titans,hope_attention,hope")
    ap.add_argument("--inner-chunk", type=int, default=16, help="hope rows also at this "
                    "cms.inner_chunk (0: the exact chain only)")  # fmt: skip
    ap.add_argument("--peak-child", nargs=4, metavar=("VARIANT", "D", "CHUNK", "INNER"))
    a = ap.parse_args()
    if a.peak_child:
        peak_child(a.peak_child[0], *(int(x) for x in a.peak_child[1:]))
        return
    kinds = a.kinds.split(",")
    gpu = torch.cuda.is_available()
    where = torch.cuda.get_device_name(0) if gpu else f"CPU, {os.cpu_count()} cores"
    print(f"device: {where}; torch {torch.__version__}; {SPEC.name} trial configs, seed 0, "
          f"{a.steps} timed steps after 1 untimed\n")  # fmt: skip
    rates = {k: tokens_per_s(trial(k, a.steps)) for k in kinds}
    for k in kinds if a.inner_chunk else ():
        if k.startswith("hope"):  # the chunked chain beside the exact one
            rates[f"{k}, cms.inner_chunk {a.inner_chunk}"] = tokens_per_s(
                trial(k, a.steps, inner_chunk=a.inner_chunk)
            )
    base = rates.get("transformer")
    print("| kind | training tokens/s | / transformer |")
    print("|---|---:|---:|")
    for k, r in rates.items():
        print(f"| {k} | {r:,.0f} | {r / base:.2f} |" if base else f"| {k} | {r:,.0f} | - |")
    unit = "peak GPU allocation" if gpu else "peak resident set"
    widths, chunks = [int(w) for w in a.widths.split(",")], [int(c) for c in a.chunks.split(",")]
    print(f"\n{unit}, MiB, after 2 training steps (batch x seq of the spec, d_ff = 4 d):\n")
    cols = [(d, c) for d in widths for c in chunks]
    print("| kind | " + " | ".join(f"d {d}, chunk {c}" for d, c in cols) + " |")
    print("|---|" + "---:|" * len(cols))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rows = [(k, 0) for k in kinds]
    rows += [(k, a.inner_chunk) for k in kinds if a.inner_chunk and k.startswith("hope")]
    for k, inner in rows:
        cells = []
        for d, c in cols:
            out = subprocess.run(
                [sys.executable, __file__, "--peak-child", k, str(d), str(c), str(inner)],
                capture_output=True, text=True, env=env, check=True,
            )  # fmt: skip
            mb, note = json.loads(out.stdout.strip().splitlines()[-1])
            cells.append(f"{mb:,.0f}{note}")
        label = f"{k}, cms.inner_chunk {inner}" if inner else k
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
