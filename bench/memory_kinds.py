"""Titans and HOPE against the transformer at the hope_vs_titan size: training tokens/s as
ratios measured in one run, and each kind's peak memory per trial at larger widths.

    python bench/memory_kinds.py [--steps 8] [--rounds 6] [--widths 256,768] [--chunks 16,64]
                                 [--inner-chunk 16] [--compile]

Speed: every variant of search_spaces/hope_vs_titan.yaml (its exact trial config, seed 0)
is built in this process and trains one untimed step; then `--rounds` rounds each time
`--steps` steps of every kind in turn, and each kind's tokens/s is that of its fastest
round, so that the ratios share the machine's state and a passing slowdown of the
machine does not land on one kind; the hope kinds also with their CMS chain read in chunks
of `--inner-chunk` tokens (cms.inner_chunk). Memory: each (kind, d_model,
memory_chunk) trains 2 steps in a fresh process at the spec's batch and sequence, d_ff =
4 d, and reports that process's peak resident set (CPU) or peak allocation (GPU), in MiB. A
memory whose chunk materialised one weight per token would grow with B x chunk x d^2; the
dual form grows with B x d^2 only, so the rows for two chunk sizes should match.
Beside each speed: the kind's matrix-multiply FLOPs per training step (torch's
FlopCounterMode, attention included) and the transformer's FLOPs over them, the ratio a kind
would reach at the transformer's arithmetic efficiency: a kind that does 2.5 times the
transformer's matrix work cannot reach 0.5x of its tokens/s by removing overhead. The last
column is the speed ratio over that bound ratio: the share of the bound a kind reaches.
The speed table also has a row per mechanism of `VARIANTS` (memory_use mac and mag,
persistent tokens, per-chunk gates, memory heads), each on top of its spec
variant; the memory table has `--peak-kinds`.
`--compile`: the speed table with every kind, the transformer included, under train.compile
(compiled after untimed steps; the FLOPs are the same), each kind with static shapes, as
in a process of its own.
A figure to read, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "search_spaces" / "hope_vs_titan.yaml"


# Rows beyond the spec's variants: (the spec variant they start from, fields on top, as
# "section.field"). The mechanisms of issue #32, each alone, at the spec's size; and MAC with
# one segment per call, which has MAC's work without its segment-to-segment recurrence.
# (Names without commas: --kinds is a comma-separated list.)
VARIANTS = {
    "titans+mac": ("titans", {"model.memory_use": "mac", "model.mac_segment": 16}),
    "titans+mac_one_segment": ("titans", {"model.memory_use": "mac", "model.mac_segment": 64}),
    "titans+mag": ("titans", {"model.memory_use": "mag", "model.window": 16}),
    "titans+persistent_tokens_4": ("titans", {"model.persistent_tokens": 4}),
    "titans+memory_gates_chunk": ("titans", {"model.memory_gates": "chunk"}),
    "titans+memory_heads_4": ("titans", {"model.memory_heads": 4}),
    "titans+deep_momentum": (
        "titans",
        {"model.memory_optimizer": "deep_momentum", "model.memory_deep_hidden": 16},
    ),  # fmt: skip
    "hope+cms_deep_momentum": (
        "hope",
        {"cms.inner_optimizer": "deep_momentum", "cms.deep_momentum_hidden": 16},
    ),  # fmt: skip
}


def trial(variant: str, steps: int, inner_chunk: int = 0, **model) -> dict:
    import dataclasses

    import models.kinds  # noqa: F401 - the built-in kinds
    from models.registry import model_kind
    from nlsweep.config.builder import to_dict
    from nlsweep.spec import load_spec

    variant, extra = VARIANTS.get(variant, (variant, {}))
    spec = load_spec(SPEC, available={"CPU": float(os.cpu_count() or 1), "GPU": 0.0})
    if variant not in spec.variants:
        raise SystemExit(f"--kinds: {variant!r} is neither a variant of {SPEC.name} nor one "
                         f"of {', '.join(VARIANTS)}")  # fmt: skip
    raw = to_dict(spec.trial_config({"variant": variant, "train.seed": 0}))
    for key, value in extra.items():
        section, field = key.split(".")
        raw[section][field] = value
    raw["model"].update(model)
    fields = {f.name for f in dataclasses.fields(model_kind(raw["model"]["kind"]).config_cls)}
    raw["model"] = {k: v for k, v in raw["model"].items() if k in fields}
    if inner_chunk:
        raw["cms"]["inner_chunk"] = inner_chunk
    # one thread, as each of a sweep's trials on a CPU gets (resources: {cpu: 1}); it also
    # keeps the ratios steady on a busy machine, where spinning OpenMP threads are not
    raw["train"].update(steps=steps + 1, eval_every=steps + 1, device="auto", threads=1)
    if not raw["model"]["kind"].startswith("hope"):
        raw.pop("teach")  # only the hope kinds take a teach section
    return raw


def interleaved_rates(configs: dict, steps: int, rounds: int) -> dict:
    """Training tokens/s of each config: the fastest of `rounds` rounds of `steps` steps,
    the kinds taking turns within each round (after untimed steps: one, or under
    train.compile two, as a carried state's first step compiles a second graph)."""
    from nlsweep.training.trainer import Trainer
    from nlsweep.training.trial import TrialConfig

    trainers = {k: Trainer(TrialConfig.from_dict(raw)) for k, raw in configs.items()}
    best = {}
    for k, t in trainers.items():
        for _ in range(2 if configs[k]["train"].get("compile") else 1):
            t.train_step()
    for _ in range(rounds):
        for k, t in trainers.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                t.train_step()
            best[k] = min(best.get(k, float("inf")), time.perf_counter() - t0)
    return {
        k: steps * raw["data"]["batch_size"] * raw["data"]["seq_len"] / best[k]
        for k, raw in configs.items()
    }


def step_flops(raw: dict) -> float:
    """Matrix-multiply FLOPs of one training step (after one untimed step)."""
    from torch.utils.flop_counter import (
        FlopCounterMode,
        sdpa_backward_flop_count,
        sdpa_flop_count,
    )

    from nlsweep.training.trainer import Trainer
    from nlsweep.training.trial import TrialConfig

    def attention(q, k, v, *args, **kwargs):
        return sdpa_flop_count(q, k, v)

    def attention_backward(grad, q, k, v, *args, **kwargs):
        return sdpa_backward_flop_count(grad, q, k, v)

    aten = torch.ops.aten  # the CPU attention kernels, which the counter does not know
    cpu_sdpa = {
        aten._scaled_dot_product_flash_attention_for_cpu: attention,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: attention_backward,
    }
    t = Trainer(TrialConfig.from_dict(raw))
    t.train_step()
    with FlopCounterMode(display=False, custom_mapping=cpu_sdpa) as counter:
        t.train_step()
    return float(counter.get_total_flops())


def peak_child(variant: str, d: int, chunk: int, inner_chunk: int = 0) -> None:
    """In a fresh process: 2 training steps, then the peak memory as JSON on stdout."""
    from nlsweep.training.runtime import Diverged, memory_peaks
    from nlsweep.training.trainer import Trainer
    from nlsweep.training.trial import TrialConfig

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
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--widths", default="256,768")
    ap.add_argument("--chunks", default="16,64")
    ap.add_argument("--kinds", default=",".join(["transformer", "titans", "hope_attention",
                                                 "hope", "hope_selfmod", *VARIANTS]))  # fmt: skip
    ap.add_argument("--peak-kinds", default="transformer,titans,hope_attention,hope",
                    help="the kinds of the memory table")  # fmt: skip
    ap.add_argument("--inner-chunk", type=int, default=16, help="hope rows also at this "
                    "cms.inner_chunk (0: the exact chain only)")  # fmt: skip
    ap.add_argument("--compile", action="store_true", help="every kind of the speed table, "
                    "the transformer included, under train.compile (inductor)")  # fmt: skip
    ap.add_argument("--peak-child", nargs=4, metavar=("VARIANT", "D", "CHUNK", "INNER"))
    a = ap.parse_args()
    if a.peak_child:
        peak_child(a.peak_child[0], *(int(x) for x in a.peak_child[1:]))
        return
    kinds = a.kinds.split(",")
    gpu = torch.cuda.is_available()
    where = torch.cuda.get_device_name(0) if gpu else f"CPU, {os.cpu_count()} cores"
    mode = ", train.compile" if a.compile else ""
    print(f"device: {where}; torch {torch.__version__}; {SPEC.name} trial configs{mode}, seed "
          f"0, best of {a.rounds} rounds of {a.steps} steps, kinds in turn\n")  # fmt: skip
    n = a.steps * a.rounds + 1  # each run long enough for all its timed steps
    configs = {k: trial(k, n) for k in kinds}
    for k in kinds if a.inner_chunk else ():
        if k in ("hope", "hope_attention"):  # the chunked chain beside the exact one
            configs[f"{k}, cms.inner_chunk {a.inner_chunk}"] = trial(k, n, a.inner_chunk)
    for raw in configs.values() if a.compile else ():
        raw["train"]["compile"] = True
    if a.compile:
        # Every kind's trainer lives in this one process, and their forwards share one code
        # object and so one graph cache: each kind must get a static graph of its own, as in
        # a trial's process, not a dynamic-shape recompile of the kind before it, nor (past
        # the default limit of 8 graphs) none: the trainer refuses that rather than run
        # eagerly (nlsweep/training/runtime.py, compile_forward).
        torch._dynamo.config.automatic_dynamic_shapes = False
        torch._dynamo.config.recompile_limit = 64
    rates = interleaved_rates(configs, a.steps, a.rounds)
    flops = {k: step_flops(trial(k.split(",")[0], 1, a.inner_chunk if "," in k else 0))
             for k in rates}  # fmt: skip
    base, fbase = rates.get("transformer"), flops.get("transformer")
    print("| kind | training tokens/s | / transformer | MFLOP / step | transformer FLOPs / these "
          "| share of the bound |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for k, r in rates.items():
        ratio = f"{r / base:.2f}" if base else "-"
        bound = f"{fbase / flops[k]:.2f}" if fbase else "-"
        share = f"{(r / base) / (fbase / flops[k]):.2f}" if base and fbase else "-"
        print(f"| {k} | {r:,.0f} | {ratio} | {flops[k] / 1e6:,.0f} | {bound} | {share} |")
    unit = "peak GPU allocation" if gpu else "peak resident set"
    widths, chunks = [int(w) for w in a.widths.split(",")], [int(c) for c in a.chunks.split(",")]
    print(f"\n{unit}, MiB, after 2 training steps (batch x seq of the spec, d_ff = 4 d):\n")
    cols = [(d, c) for d in widths for c in chunks]
    print("| kind | " + " | ".join(f"d {d}, chunk {c}" for d, c in cols) + " |")
    print("|---|" + "---:|" * len(cols))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    peak_kinds = a.peak_kinds.split(",") if a.peak_kinds else []
    rows = [(k, 0) for k in peak_kinds]
    rows += [(k, a.inner_chunk) for k in peak_kinds if a.inner_chunk and k.startswith("hope")]
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
