"""The continual-learning section of a report, for sweeps over `data.phases`.

From each finished run's final metrics (`nlsweep/data/phases.py` logs them): per configuration
(seeds pooled), forgetting of every earlier phase and its mean, with 95% t-intervals and the
difference to the baseline row; and the phase matrix, rows trained through, columns
evaluated on, each cell the mean and spread over seeds of b_j(e_i) in bits per byte.
"""

from __future__ import annotations

import ast

from nlsweep.config.space import trial_label
from nlsweep.report.results import Context, Trial
from nlsweep.report.stats import compare, summarize


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x != x else f"{x:.{digits}f}"  # NaN: no value


def _mean_ci(values: list[float]) -> str:
    s = summarize(values)
    if s.n == 0:
        return "n/a"
    ci = f" [{_fmt(s.ci[0])}, {_fmt(s.ci[1])}]" if s.ci else ""
    return f"{_fmt(s.mean)}{ci}"


def _groups(trials: list[Trial]) -> dict[str, list[Trial]]:
    out: dict[str, list[Trial]] = {}
    for t in trials:
        out.setdefault(trial_label(t.factors), []).append(t)
    return out


def continual_section(trials: list[Trial], ctx: Context) -> list[str]:
    """Markdown lines of the section; none when no finished run trained on phases."""
    done = [t for t in trials if t.final is not None and "forgetting/mean" in t.run.metrics]
    if not done:
        return []
    names = phase_names(done[0].run.params)
    groups = _groups(done)
    base = next((g for g in groups.values() if ctx.baseline and g[0].factors == ctx.baseline), None)
    lines = [
        "",
        "## Continual learning",
        "",
        f"Phases, trained in this order: {', '.join(f'`{n}`' for n in names)}. Bits per byte "
        "of each phase's held-out windows (the same `train.eval_batches` windows at every "
        "evaluation). Forgetting of a phase = its final bpb minus the best it reached during "
        "the run (0: nothing lost). Mean and 95% t-interval over seeds; the difference to the "
        "baseline row is paired by seed when the seeds match.",
        "",
    ]
    leaks = [f"`{n}` {100 * done[0].run.metrics[f'data/{n}/val_overlap']:.1f}%" for n in names
             if f"data/{n}/val_overlap" in done[0].run.metrics]  # fmt: skip
    if leaks:
        lines += [f"Held-out 32-character shingles also in the phase's training split: "
                  f"{', '.join(leaks)}.", ""]  # fmt: skip
    earlier = names[:-1]
    header = ["configuration", "n", "final mean bpb", *(f"forgetting {n}" for n in earlier)]
    header += ["mean forgetting", "vs baseline"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, members in groups.items():
        metric = [t.run.metrics.get("val/mean_bpb", float("nan")) for t in members]
        cells = [label, str(len(members)), _mean_ci(metric)]
        cells += [_mean_ci([t.run.metrics[f"forgetting/{n}"] for t in members]) for n in earlier]
        cells.append(_mean_ci([t.run.metrics["forgetting/mean"] for t in members]))
        cells.append(_versus(members, base) if base is not None and members is not base else "")
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    for label, members in groups.items():
        lines += ["", f"**{label}**: bpb after training through the row's phase, on the "
                  f"column's held-out split (mean ± std over {len(members)} seeds; "
                  "— = not evaluated then)", ""]  # fmt: skip
        lines += ["| trained through | " + " | ".join(names) + " |"]
        lines += ["|" + "---|" * (len(names) + 1)]
        for trained in names:
            row = [f"after {trained}"]
            for on in names:
                key = f"continual/after_{trained}/{on}/bpb"
                s = summarize([t.run.metrics[key] for t in members if key in t.run.metrics])
                spread = f" ± {_fmt(s.std)}" if s.n > 1 else ""
                row.append("—" if s.n == 0 else f"{_fmt(s.mean)}{spread}")
            lines.append("| " + " | ".join(row) + " |")
    return lines


def _versus(members: list[Trial], base: list[Trial]) -> str:
    """Mean forgetting minus the baseline's, with its interval and p."""
    c = compare(
        {t.seed: t.run.metrics["forgetting/mean"] for t in members},
        {t.seed: t.run.metrics["forgetting/mean"] for t in base},
    )
    if c is None:
        return "n/a"
    ci = f" [{_fmt(c.ci[0])}, {_fmt(c.ci[1])}]" if c.ci else ""
    p = f", p {c.p:.2g}" if c.p is not None else ""
    return f"{c.diff:+.3f}{ci}{p}"


def phase_names(params: dict[str, str]) -> list[str]:
    """The phase names of a run, in order, from its logged `data.phases` param ([] for a
    run without phases). The param is the repr of a list of plain dicts: literals only."""
    text = params.get("data.phases", "None")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return []
    if not isinstance(value, list):
        return []
    return [p.get("name") or p.get("corpus") for p in value if isinstance(p, dict)]
