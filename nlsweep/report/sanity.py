"""Sanity checks of a sweep: what a reviewer must see before trusting its numbers.

Nothing silent: factors that changed nothing (the signature of a mechanism that fell back),
held-out text that overlaps training, failed / diverged / stopped / unfinished runs, CMS
levels that never updated, and warnings that mechanisms attached to their runs.
"""

from __future__ import annotations

import json

from nlsweep.report.results import Context, Trial
from nlsweep.report.stats import same_to_digits
from nlsweep.tracking.tags import TAG_DIVERGED, TAG_ERROR, TAG_STOPPED, WARNING_PREFIX

LEAK_THRESHOLD = 0.01


def sanity_section(trials: list[Trial], ctx: Context) -> list[str]:
    items, leaks = [], []
    if ctx.algorithm == "grid":
        for f in noop_factors(trials, ctx):
            items.append(
                f"**Probable no-op**: every value of `{f}` gives the same final "
                f"`{ctx.metric}` to 5 significant digits, seed for seed. A factor that "
                "does nothing is usually a mechanism that silently fell back."
            )
    for t in trials:
        r, who = t.run, f"`{t.run.name}` ({t.run.run_id[:8]})"
        overlap = r.metrics.get("data/val_overlap")
        if overlap is not None and overlap > LEAK_THRESHOLD:
            leaks.append((overlap, who))
        if TAG_DIVERGED in r.tags:
            items.append(f"**Diverged**: {who}: {r.tags[TAG_DIVERGED]}")
        elif r.status == "FAILED":
            items.append(f"**Failed**: {who}: {r.tags.get(TAG_ERROR, 'no error recorded')}")
        elif r.status in ("KILLED", "RUNNING", "SCHEDULED"):
            items.append(f"**Not finished** ({r.status}): {who}")
        if TAG_STOPPED in r.tags:
            step = r.history.get(ctx.metric, [(0, 0.0)])[-1][0]
            items.append(f"**Stopped early** by {r.tags[TAG_STOPPED]}: {who} at step {step}")
        for key, value in r.metrics.items():
            if key.startswith("cms/") and key.endswith("/updates") and value == 0:
                items.append(
                    f"**Never fired**: {who}: CMS level `{key.split('/')[1]}` took no "
                    "update (its period exceeds the run)."
                )
        items += [
            f"**Warning**: {who}: {v}" for k, v in r.tags.items() if k.startswith(WARNING_PREFIX)
        ]
    if leaks:
        worst, who = max(leaks)
        items.insert(
            0,
            f"**Leaking split?** {len(leaks)} of {len(trials)} runs report more than "
            f"{LEAK_THRESHOLD:.0%} of held-out 32-character shingles also in training "
            f"(`data/val_overlap`, up to {worst:.1%} in {who}). Held-out text that "
            "repeats training text flatters every number above.",
        )
    if not items:
        return [
            "No problems found. Checked: factors with no effect, held-out text overlapping "
            "training, failed, diverged, stopped and unfinished runs, CMS levels that never "
            "updated, and mechanism warnings."
        ]
    return [f"- {i}" for i in items]


def noop_factors(trials: list[Trial], ctx: Context) -> list[str]:
    """Factors whose values all give identical results (5 significant digits) per seed."""
    flagged = []
    for f in ctx.factors:
        groups: dict[str, list[float]] = {}
        for t in trials:
            if t.final is None:
                continue
            others = {g: v for g, v in t.factors.items() if g != f}
            groups.setdefault(json.dumps([others, t.seed], default=str), []).append(t.final)
        compared = [vs for vs in groups.values() if len(vs) >= 2]
        if compared and all(same_to_digits(v, vs[0]) for vs in compared for v in vs):
            flagged.append(f)
    return flagged
