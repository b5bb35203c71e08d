"""Markdown and CSV rendering of a sweep's results (tables, figure links, header)."""

from __future__ import annotations

import csv
import math
import os
import shlex
from datetime import datetime, timezone
from pathlib import Path

from nlsweep import figures
from nlsweep.results import SEED, Context, Row, Trial
from nlsweep.space import short_names
from nlsweep.spec import VARIANT
from nlsweep.tasks import TASKS
from nlsweep.tracking import (
    TAG_COMMIT,
    TAG_HARDWARE,
    TAG_SHA,
    TAG_SPEC,
    TAG_SPEC_SHOWN,
    TAG_SPEC_TEXT,
    run_link,
)

TOP_K = 10


def _best_row(rows: list[Row], mode: str) -> Row | None:
    scored = [r for r in rows if r.summary.n > 0]
    if not scored:
        return None
    return (min if mode == "min" else max)(scored, key=lambda r: r.summary.mean)


def _fmt(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return f"{p:.2g}" if p >= 1e-4 else "<1e-4"


def _ci(ci) -> str:
    return f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "n/a"


def metric_label(m: str, trials: list[Trial]) -> str:
    """The metric's name with its unit where readers could misread it: a character-level
    perplexity is not comparable with the word-level perplexities of papers."""
    if not m.endswith("/ppl"):
        return f"`{m}`"
    corpora = {t.run.params.get("data.corpus", "pydoc") for t in trials}
    unit = "per token" if corpora & set(TASKS) else "per character"
    return f"`{m}` ({unit})"


def _scored_whole_split(t: Trial) -> bool:
    """A run's final evaluation scored the whole held-out split: its `eval/full_split`
    marker, or its config (`train.final_eval: full` on a text corpus; runs from before that
    field existed scored the sampled windows)."""
    if "eval/full_split" in t.run.metrics:
        return t.run.metrics["eval/full_split"] == 1.0
    p = t.run.params
    return p.get("train.final_eval") == "full" and p.get("data.corpus", "pydoc") not in TASKS


def final_note(trials: list[Trial]) -> str:
    """What the final value of each run scored, and how many held-out tokens."""
    done = [t for t in trials if t.final is not None]
    if not done:
        return "final: no finished run"
    full = [t for t in done if _scored_whole_split(t)]
    counts = sorted({int(t.run.metrics.get("data/val_tokens", 0)) for t in done})
    n = f"{counts[0]:,}" if len(counts) == 1 else f"{counts[0]:,} to {counts[-1]:,}"
    if len(full) == len(done):
        return f"final: whole held-out split, {n} tokens"
    if not full and all(t.run.params.get("data.corpus") in TASKS for t in done):
        return (
            "final: the generated held-out set (the same batches every evaluation), "
            f"{n} scored tokens"
        )
    if not full:
        return f"final: the sampled held-out windows of every evaluation, {n} tokens"
    return f"final: whole held-out split for {len(full)} of {len(done)} runs, {n} tokens"


def rerun_command(spec_file: str, trial: Trial) -> str:
    """`python -m nlsweep.train SPEC [--variant NAME] --set ...`: the spec's base with this
    trial's values. A variant is named, not spelled out as base overrides: the spec checks
    every variant against the base, and a base changed to one variant's model kind can make
    another variant's keys unknown."""
    spec = os.path.relpath(spec_file) if spec_file.startswith(os.getcwd()) else spec_file
    parts = ["python", "-m", "nlsweep.train", spec]
    for f in [*trial.factors, SEED]:
        if f == VARIANT:
            parts += ["--variant", str(trial.factors[f])]
        elif f in trial.run.params:
            parts += ["--set", f"base.{f}={trial.run.params[f]}"]
    return shlex.join(parts)


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in body]
    return lines


def grid_section(rows: list[Row], ctx: Context, fig_dir: Path, md_dir: Path) -> list[str]:
    names = short_names(ctx.factors)
    best = _best_row(rows, ctx.mode)
    m = ctx.metric
    trials = [t for r in rows for t in r.trials]
    header = [
        "row",
        *(names[f] for f in ctx.factors),
        "n",
        f"{metric_label(m, trials).replace('`', '')} mean ± std",
        "95% CI",
        "Δ vs baseline [95% CI]",
        "p (Holm)",
        "best during training",
        "tokens/s",
        "wall s",
    ]
    body = []
    for i, r in enumerate(rows, 1):
        s, c = r.summary, r.comparison
        if r.is_baseline:
            delta, p = "baseline", "—"
        elif c is None:
            delta, p = "n/a", "n/a"
        else:
            mark = "" if c.distinguishable else " ≈"
            kind = "paired" if c.paired else "Welch"
            delta = f"{c.diff:+.4f} {_ci(c.ci)} {kind}{mark}"
            p = _fmt_p(r.p_holm)
        failed = len(r.trials) - s.n
        cells = [
            f"R{i}",
            *(str(r.factors.get(f)) for f in ctx.factors),
            f"{s.n}" + (f" ({failed} missing)" if failed else ""),
            f"{_fmt(s.mean)} ± {_fmt(s.std)}",
            _ci(s.ci),
            delta,
            p,
            _fmt(r.best.mean),
            _fmt(r.tokens_per_s, 0),
            _fmt(r.wall_s, 1),
        ]
        if r is best:
            cells = [f"**{c}**" for c in cells]
        body.append(cells)
    out = [
        f"Main table: the **final** held-out {metric_label(m, trials)} of each run (the value "
        f"at its last evaluation; {final_note(trials)}), pooled over seeds; the learning "
        "curves' earlier points score the sampled windows. 'best during training' is the "
        "mean of each run's "
        f"best evaluation. Bold: the best row ({ctx.mode}). ≈ : the 95% CI of the "
        "difference contains 0, so the row is not distinguishable from the baseline. "
        "Intervals are per row (unadjusted); p-values are Holm-adjusted across the rows "
        "compared with the baseline, so a row can have an interval that excludes 0 and a "
        "p-value above 0.05.",
        "",
    ]
    out += _table(header, body)
    curves = {
        r.label: [t.run.history.get(m, []) for t in r.trials if t.final is not None] for r in rows
    }
    curves = {k: v for k, v in curves.items() if v}
    if curves:
        figures.learning_curves(curves, m, fig_dir / "curves.png")
        out += ["", f"![learning curves]({rel(fig_dir / 'curves.png', md_dir)})"]
    out += ["", "### Rows: MLflow runs and how to re-run one trial", ""]
    spec_file = spec_shown(ctx.sweep.parent.tags, "SPEC")
    for i, r in enumerate(rows, 1):
        links = ", ".join(
            run_link(ctx.sweep.tracking_uri, ctx.sweep.experiment_id, t.run.run_id)
            + f" (seed {t.seed})"
            for t in r.trials
        )
        out.append(f"- R{i} `{r.label}`: runs {links}")
        out.append(f"  `{rerun_command(spec_file, r.trials[0])}`")
    return out


def sampled_section(trials: list[Trial], ctx: Context, fig_dir: Path, md_dir: Path) -> list[str]:
    m = ctx.metric
    done = [t for t in trials if t.final is not None]
    ranked = sorted(done, key=lambda t: t.final, reverse=ctx.mode == "max")
    names = short_names(ctx.factors)
    header = [
        "rank",
        *(names[f] for f in ctx.factors),
        "seed",
        f"final {m}",
        "best during training",
        "run",
    ]
    body = [
        [
            str(i),
            *(_short(t.factors.get(f)) for f in ctx.factors),
            str(t.seed),
            _fmt(t.final),
            _fmt(t.best),
            run_link(ctx.sweep.tracking_uri, ctx.sweep.experiment_id, t.run.run_id),
        ]
        for i, t in enumerate(ranked[:TOP_K], 1)
    ]
    out = [
        f"{ctx.algorithm} search: {len(trials)} trials, {len(done)} finished. The top "
        f"{min(TOP_K, len(done))} by final held-out {metric_label(m, trials)} ({ctx.mode}; "
        f"{final_note(trials)}):",
        "",
    ]
    out += _table(header, body)
    if done:
        log_x = {f for f, d in ctx.space.items() if "loguniform" in d}
        points = [{"factors": t.factors, "value": t.final} for t in done]
        figures.factor_scatter(points, ctx.factors, m, fig_dir / "factors.png", log_x)
        figures.search_history([t.final for t in done], m, ctx.mode, fig_dir / "history.png")
        out += [
            "",
            f"![metric against each factor]({rel(fig_dir / 'factors.png', md_dir)})",
            "",
            f"![search history]({rel(fig_dir / 'history.png', md_dir)})",
        ]
    if ranked:
        cmd = rerun_command(spec_shown(ctx.sweep.parent.tags, "SPEC"), ranked[0])
        out += ["", f"Re-run the best trial alone: `{cmd}`"]
    with open(fig_dir / "table.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*ctx.factors, "seed", "final", "best", "status", "run_id"])
        for t in trials:
            w.writerow(
                [
                    *(t.factors.get(f) for f in ctx.factors),
                    t.seed,
                    t.final,
                    t.best,
                    t.run.status,
                    t.run.run_id,
                ]
            )
    return out


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def header_section(ctx: Context, trials: list[Trial]) -> list[str]:
    p = ctx.sweep.parent
    hw = sorted({t.run.tags[TAG_HARDWARE] for t in trials if TAG_HARDWARE in t.run.tags})
    compute = sum(t.run.metrics.get("perf/elapsed_s", 0.0) for t in trials)
    spec_file = spec_shown(p.tags, "?")
    rows = [
        ["spec", f"`{spec_file}` (sha256 `{p.tags.get(TAG_SHA, '?')[:16]}`)"],
        ["project commit", f"`{p.tags.get(TAG_COMMIT, 'unknown')}`"],
        [
            "sweep",
            f"parent run `{p.run_id}` of experiment `{ctx.name}` in `{ctx.sweep.tracking_uri}`",
        ],
        ["dates", f"{_date(p.start_ms)} to {_date(p.end_ms)}"],
        ["hardware", "; ".join(hw) or "not recorded"],
        ["compute", f"{len(trials)} trials, {compute:.1f} trial-seconds ({compute / 3600:.3f} h)"],
        [
            "objective",
            f"{metric_label(ctx.metric, trials)} ({ctx.mode}) on held-out data; "
            f"{ctx.algorithm} search; {final_note(trials)}",
        ],
        ["report generated", _date(datetime.now(timezone.utc).timestamp() * 1000)],
    ]
    desc = p.tags.get("mlflow.note.content", "")
    out = [f"# Ablation report: {ctx.name}", ""]
    if desc:
        out += [f"> {desc}", ""]
    out += _table(["", ""], rows)
    text = p.tags.get(TAG_SPEC_TEXT)
    if text:
        out += [
            "",
            "<details><summary>Spec</summary>",
            "",
            "```yaml",
            text.rstrip(),
            "```",
            "",
            "</details>",
        ]
    return out


def spec_shown(tags: dict, default: str) -> str:
    """The spec path as the sweep recorded it for reports; older sweeps: relative to here."""
    if TAG_SPEC_SHOWN in tags:
        return tags[TAG_SPEC_SHOWN]
    path = tags.get(TAG_SPEC, default)
    return os.path.relpath(path) if path.startswith(os.getcwd()) else path


def _date(ms) -> str:
    if not ms:
        return "?"
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def rel(path: Path, md_dir: Path) -> str:
    return os.path.relpath(path, md_dir).replace(os.sep, "/")


def write_csv(rows: list[Row], ctx: Context, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "row",
                *ctx.factors,
                "n",
                "mean",
                "std",
                "ci_low",
                "ci_high",
                "diff",
                "diff_ci_low",
                "diff_ci_high",
                "paired",
                "p",
                "p_holm",
                "best_mean",
                "tokens_per_s",
                "wall_s",
                "baseline",
                "run_ids",
            ]
        )
        for i, r in enumerate(rows, 1):
            s, c = r.summary, r.comparison
            w.writerow(
                [
                    f"R{i}",
                    *(r.factors.get(f) for f in ctx.factors),
                    s.n,
                    s.mean,
                    s.std,
                    *(s.ci or ("", "")),
                    *(
                        (c.diff, *(c.ci or ("", "")), c.paired, "" if c.p is None else c.p)
                        if c
                        else ("",) * 5
                    ),
                    "" if r.p_holm is None else r.p_holm,
                    r.best.mean,
                    r.tokens_per_s,
                    r.wall_s,
                    r.is_baseline,
                    " ".join(t.run.run_id for t in r.trials),
                ]
            )
