"""The lm-eval adapter's loglikelihood throughput against the same model's plain batched forward.

    python bench/lm_eval_throughput.py [SPEC] [--requests 512] [--batch-size 16] [--rounds 5]

Builds the spec's base model (the quickstart's by default; its weights do not change the
time), makes `--requests` multiple-choice-like requests from the corpus's held-out text (a
context of 32 to 200 characters and a continuation of 4 to 24), and times, in interleaved
rounds:

    adapter   `NlsweepLM.loglikelihood` on lm-eval `Instance`s: tokenizing, ordering,
              padding, the forward, log-softmax and picking the continuation's scores
    forward   the model's forward alone (no_grad, eval mode) over the very batches the
              adapter reads: the same rows, order and padding

and prints requests/s of both per round and the median ratio adapter / forward (1.0: the
adapter costs nothing beyond the forward).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import torch
from lm_eval.api.instance import Instance

from nlsweep.evaluation import Scorer, trial_from_trainer
from nlsweep.evaluation.adapter import NlsweepLM
from nlsweep.spec import load_spec
from nlsweep.training.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent


def requests_from(trainer, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(context, continuation) pairs cut from the held-out split's text."""
    windows = [x.reshape(-1) for x, _ in trainer.sampled_windows()]
    text = trainer.corpus.vocab.decode(torch.cat(windows).tolist())
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        c, k = rng.randint(32, 200), rng.randint(4, 24)
        at = rng.randrange(0, max(1, len(text) - c - k))
        out.append((text[at : at + c], text[at + c : at + c + k]))
    return out


def plain_batches(scorer: Scorer, lm: NlsweepLM, pairs) -> list[torch.Tensor]:
    """The padded input batches the adapter's scorer reads for `pairs`, in its order."""
    tokens = [lm._encode_pair(c, x) for c, x in pairs]
    order = sorted(range(len(tokens)), key=lambda i: -(len(tokens[i][0]) + len(tokens[i][1])))
    batches = []
    for b in range(0, len(order), scorer.batch_size):
        seqs = [scorer._clip(*tokens[i]) for i in order[b : b + scorer.batch_size]]
        batches.append(scorer._rows(seqs))
    return batches


@torch.no_grad()
def forward_only(model, batches, targets: bool) -> None:
    for x, y in batches:
        model(x, None, **({"targets": y} if targets else {}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec", nargs="?", default=str(ROOT / "search_spaces" / "quickstart.yaml"))
    ap.add_argument("--requests", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = load_spec(args.spec)
    trainer = Trainer(spec.base, device=torch.device("cpu"))
    lm = NlsweepLM(trial=trial_from_trainer(trainer), batch_size=args.batch_size)
    pairs = requests_from(trainer, args.requests)
    instances = [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)]
    batches = plain_batches(lm.scorer, lm, pairs)
    lm.loglikelihood(instances[: args.batch_size], disable_tqdm=True)  # warm up both paths
    forward_only(lm.trial.model, batches[:1], lm.scorer.targets)
    ratios = []
    print(f"{spec.base.model.kind}, {args.requests} requests, batch {args.batch_size}, "
          f"window {lm.max_length}, {args.threads} thread(s)")  # fmt: skip
    for r in range(args.rounds):
        t0 = time.perf_counter()
        lm.loglikelihood(instances, disable_tqdm=True)
        adapter = time.perf_counter() - t0
        t0 = time.perf_counter()
        forward_only(lm.trial.model, batches, lm.scorer.targets)
        plain = time.perf_counter() - t0
        ratios.append(plain / adapter)
        print(f"round {r + 1}: adapter {args.requests / adapter:8.1f} req/s, forward "
              f"{args.requests / plain:8.1f} req/s, ratio {ratios[-1]:.3f}")  # fmt: skip
    print(
        f"median throughput ratio adapter / forward: {statistics.median(ratios):.3f} "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f}, {args.rounds} rounds)"
    )


if __name__ == "__main__":
    main()
