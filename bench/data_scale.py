"""Data at scale: prepare time and memory, a trial's start and memory, against a
nanoGPT-style memmap anchor, at several corpus sizes.

    python bench/data_scale.py [--sizes 10,100,1000] [--sweep] [--rounds 3]

For each size (MB of UTF-8 text) a .jsonl corpus of documents (word salad over a fixed
vocabulary, some of it beyond ASCII) is generated in a temporary folder, deleted afterwards.
In one run, interleaved per size, it measures (wall seconds; peak memory: the PSS summed over
the process and its children, sampled every 50 ms, reported as RSS):

    prepare    nlsweep: `nlsweep prepare SPEC` into an empty cache;
               anchor:  two passes over the jsonl (the char vocabulary, then ids with an
                        end-of-document id, every 10th document held out) into uint16 files
    trial      nlsweep: `python -m nlsweep.train SPEC` for one step (cache warm): start to
                        exit, i.e. imports, spec, mapping the corpus, the model, one step
                        (after os.sync; the median of --rounds rounds, interleaved);
               anchor:  imports torch and models, maps the memmap, the same model, one step
    sweep      with --sweep: a 2-trial `nlsweep run` (one step each), the whole process
               tree's peak RSS (Ray's own processes included); anchor: two anchor trials
               side by side

Prints one row per (size, what) with both figures and their ratio. Every figure is from
this one run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent


def make_corpus(path: Path, megabytes: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz" * 3 + "éüß"
    vocab = ["".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(5000)]
    target = megabytes * 1_000_000
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            lines = [" ".join(rng.choices(vocab, k=rng.randint(5, 15))) for _ in range(20)]
            row = json.dumps({"text": "\n".join(lines)}, ensure_ascii=False) + "\n"
            f.write(row)
            written += len(row.encode("utf-8"))


ANCHOR_PREPARE = r"""
import json, sys, numpy as np
src, out = sys.argv[1], sys.argv[2]
chars = set()
for line in open(src, encoding="utf-8"):  # pass 1: the vocabulary
    chars.update(json.loads(line)["text"])
points = np.array(sorted(map(ord, chars)), dtype=np.int64)
files = {"train": open(f"{out}/train.bin", "wb"), "val": open(f"{out}/val.bin", "wb")}
for i, line in enumerate(open(src, encoding="utf-8")):  # pass 2: ids, an end id per document
    cp = np.frombuffer(json.loads(line)["text"].encode("utf-32-le"), dtype=np.uint32)
    ids = np.searchsorted(points, cp.astype(np.int64)) + 2
    np.append(ids, 1).astype(np.uint16).tofile(files["val" if i % 10 == 0 else "train"])
for f in files.values():
    f.close()
json.dump({"vocab": len(points) + 2}, open(f"{out}/meta.json", "w"))
"""

ANCHOR_TRIAL = r"""
import json, sys, numpy as np, torch, torch.nn.functional as F
from models.registry import model_kind
import models.kinds  # noqa: F401 - the built-in kinds
from nlsweep.config.builder import build
out = sys.argv[1]
torch.set_num_threads(1)
vocab = json.load(open(f"{out}/meta.json"))["vocab"]
data = np.memmap(f"{out}/train.bin", dtype=np.uint16, mode="r")
kind = model_kind("nested_lstm")
net = kind.build(build(kind.config_cls, {"kind": "nested_lstm", "d_model": 64, "d_ff": 128}), vocab)
opt = torch.optim.Adam(net.parameters(), lr=3e-3)
B, T = 16, 64
row = (len(data) - 1) // B
rows = np.stack([data[b * row : b * row + T + 1] for b in range(B)]).astype(np.int64)
x, y = torch.from_numpy(rows[:, :-1]), torch.from_numpy(rows[:, 1:])
out = net(x)
logits = out[0] if isinstance(out, tuple) else out
F.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1)).backward()
opt.step()
"""


def _pss(p: psutil.Process) -> int:
    try:
        return p.memory_full_info().pss
    except (psutil.Error, AttributeError):
        return 0


def measure(cmd: list[str], env: dict, cwd: Path) -> tuple[float, float]:
    """(wall seconds, peak memory in GB of the process tree: the sum of its processes' PSS,
    so pages that forked workers share are counted once, not once per process)."""
    start = time.perf_counter()
    proc = psutil.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE)  # fmt: skip
    peak = 0
    while proc.poll() is None:
        try:
            tree = [proc, *proc.children(recursive=True)]
            peak = max(peak, sum(_pss(p) for p in tree))
        except psutil.Error:
            pass
        time.sleep(0.05)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-2000:]}")
    return took, peak / 1e9


def spec_for(folder: Path, corpus: Path, trials: int = 1) -> Path:
    spec = {
        "name": "data_scale",
        "metric": "val/bpb",
        "base": {
            "model": {"kind": "nested_lstm", "d_model": 64, "d_ff": 128},
            "cms": {"periods": {"fast": 1, "medium": 2, "slow": 4}},
            "optim": {"kind": "adam", "lr": 3e-3},
            "data": {"corpus": "text", "path": str(corpus), "seq_len": 64, "batch_size": 16},
            "train": {
                "steps": 1,
                "eval_every": 1,
                "eval_batches": 1,
                "final_eval": "sampled",
                "threads": 1,
            },
        },  # fmt: skip
        "space": {"train.seed": {"grid": list(range(trials))}},
        "search": {"algorithm": "grid"},
        "resources": {"cpu": 1, "gpu": 0},
        "max_concurrent": 2,
    }
    path = folder / f"spec{trials}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def median(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def row(size: int, what: str, ours: tuple, anchor: tuple) -> None:
    print(f"{size:>6} MB  {what:<8} nlsweep {ours[0]:7.1f} s {ours[1]:5.2f} GB   anchor "
          f"{anchor[0]:7.1f} s {anchor[1]:5.2f} GB   ratio {ours[0] / anchor[0]:5.2f}x time "
          f"{ours[1] / anchor[1]:5.2f}x RSS", flush=True)  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10,100,1000", help="corpus sizes in MB")
    ap.add_argument("--sweep", action="store_true", help="also a 2-trial sweep's RSS")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the trials")
    args = ap.parse_args(argv)
    print(f"data_scale: {os.cpu_count()} CPUs, python {sys.version.split()[0]}")
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="nlsweep-data-scale-") as tmp:
            tmp = Path(tmp)
            corpus = tmp / "corpus.jsonl"
            make_corpus(corpus, size)
            env = {**os.environ, "XDG_CACHE_HOME": str(tmp / "cache"), "PYTHONPATH": str(ROOT)}
            env.pop("NLSWEEP_PREPARED", None)
            spec = spec_for(tmp, corpus)
            anchor = tmp / "anchor"
            anchor.mkdir()
            py = sys.executable
            ours = measure([py, "-m", "nlsweep.cli", "prepare", str(spec)], env, tmp)
            theirs = measure([py, "-c", ANCHOR_PREPARE, str(corpus), str(anchor)], env, tmp)
            row(size, "prepare", ours, theirs)
            os.sync()  # the prepared files written back before anything is timed on them
            ours_runs, theirs_runs = [], []
            for _ in range(args.rounds):  # interleaved rounds; the median of each
                ours_runs.append(measure([py, "-m", "nlsweep.train", str(spec)], env, tmp))
                theirs_runs.append(measure([py, "-c", ANCHOR_TRIAL, str(anchor)], env, tmp))
            row(size, "trial", median(ours_runs), median(theirs_runs))
            if args.sweep:
                two = spec_for(tmp, corpus, trials=2)
                cmd = [py, "-m", "nlsweep.cli", "run", str(two), "--storage", str(tmp / "ray"),
                       "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}"]  # fmt: skip
                ours = measure(cmd, env, tmp)
                pair = f"import subprocess, sys; ps = [subprocess.Popen([sys.executable, '-c', {ANCHOR_TRIAL!r}, {str(anchor)!r}]) for _ in range(2)]; [p.wait() for p in ps]"  # noqa: E501
                theirs = measure([py, "-c", pair], env, tmp)
                row(size, "sweep", ours, theirs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
