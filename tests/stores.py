"""A synthetic MLflow store with known values, for the report, rerun and UI tests."""

import json

from nlsweep.tracking.store import Tracker
from nlsweep.tracking.tags import TAG_BASELINE, TAG_ERROR, TAG_ROLE, TAG_SPACE, TAG_SPEC, TAG_TRIAL

# medium -> seed -> final val/bpc. medium=4 is the baseline; medium=16 lost seed 2 (FAILED).
FINAL = {
    4: {0: 2.50, 1: 2.56, 2: 2.47},
    1: {0: 2.40, 1: 2.49, 2: 2.41},
    16: {0: 2.60, 1: 2.70},
}
# `lr_unused` is swept but never changes anything: the report must flag it as a no-op.
SPACE = {"cms.periods.medium": {"grid": [4, 1, 16]}, "optim.lr_unused": {"grid": [1, 2]},
         "train.seed": {"grid": [0, 1, 2]}}  # fmt: skip


def make_store(tmp_path, algorithm="grid", overlap=0.0):
    uri = f"sqlite:///{tmp_path / 'r.db'}"
    t = Tracker(uri)
    t.experiment("synthetic")
    parent = t.start_run(
        "synthetic",
        {"metric": "val/bpc", "mode": "min", "search.algorithm": algorithm},
        {TAG_ROLE: "sweep", TAG_SPACE: json.dumps(SPACE), TAG_SPEC: "/x/spec.yaml",
         TAG_BASELINE: json.dumps({"cms.periods.medium": 4, "optim.lr_unused": 1})},
    )  # fmt: skip
    runs = {}
    for medium, seeds in FINAL.items():
        for lr_unused in (1, 2):
            for seed in (0, 1, 2):
                run = t.start_run(
                    f"medium={medium} lr_unused={lr_unused} seed={seed}",
                    {"cms.periods.medium": medium, "optim.lr_unused": lr_unused,
                     "train.seed": seed},
                    {TAG_ROLE: "trial", TAG_TRIAL: f"t{medium}_{lr_unused}_{seed}"},
                    parent_id=parent,
                )  # fmt: skip
                runs[(medium, lr_unused, seed)] = run
                if seed not in seeds:
                    t.tag(run, TAG_ERROR, "RuntimeError: boom")
                    t.end(run, "FAILED")
                    continue
                final = seeds[seed]
                for step, v in ((10, final + 0.3), (20, final - 0.01), (30, final)):
                    t.log(run, {"val/bpc": v, "perf/tokens_per_s": 1000.0,
                                "perf/elapsed_s": step / 10, "data/val_overlap": overlap,
                                "cms/slow/updates": 3.0}, step)  # fmt: skip
                t.end(run, "FINISHED")
    t.end(parent, "FINISHED")
    return uri, runs
