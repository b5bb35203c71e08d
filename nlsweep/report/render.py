"""Markdown and CSV rendering of a sweep's results (tables, figure links, header)."""

from __future__ import annotations

import ast
import json
import math
import os
import shlex
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from nlsweep.config.space import short_names
from nlsweep.config.units import duration
from nlsweep.report import _figures as figures
from nlsweep.report import importance
from nlsweep.report.results import Context, Row, Trial, trials_frame
from nlsweep.tracking.config import DEFAULT_TRACKING_URI, absolute_uri
from nlsweep.tracking.read import RunData
from nlsweep.tracking.tags import (
    TAG_COMMIT,
    TAG_CORPUS_KIND,
    TAG_FORECAST,
    TAG_FORECAST_S,
    TAG_HARDWARE,
    TAG_PLUGINS,
    TAG_RESUMED,
    TAG_SHA,
    TAG_SPEC,
    TAG_SPEC_SHOWN,
    TAG_SPEC_TEXT,
)
from nlsweep.tracking.view import run_link

TOP_K = 10
MAX_ROWS = 40
"""A grid of more rows shows the baseline and its best MAX_ROWS in the markdown (every row
is in table.csv, with its run ids)."""
MAX_CURVES = 10
"""Learning curves drawn: the baseline and the best rows (one legend entry each)."""


def shown_rows(rows: list[Row], mode: str, limit: int) -> list[int]:
    """Indices of the rows a large grid's report shows: the best `limit` by mean (those
    with no mean last) and the baseline, in row order."""
    if len(rows) <= limit:
        return list(range(len(rows)))

    def key(i: int) -> float:
        m = rows[i].summary.mean
        if m is None or math.isnan(m):
            return math.inf
        return m if mode == "min" else -m

    best = sorted(range(len(rows)), key=key)[:limit]
    return sorted(set(best) | {i for i, r in enumerate(rows) if r.is_baseline})


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


def is_task(run: RunData) -> bool:
    """The run trained on a generated task (scored per token, on a generated held-out set):
    its corpus-kind tag, or in a store written before that tag, its corpus's name (the two
    tasks that existed then)."""
    kind = run.tags.get(TAG_CORPUS_KIND)
    if kind is not None:
        return kind == "task"
    return run.params.get("data.corpus") in ("mqar", "passkey")


def metric_label(m: str, trials: list[Trial]) -> str:
    """The metric's name with its unit where readers could misread it: a character-level
    perplexity is not comparable with the word-level perplexities of papers."""
    if not m.endswith("/ppl"):
        return f"`{m}`"
    subword = any(t.run.params.get("data.tokenizer") == "sentencepiece" for t in trials)
    unit = "per token" if any(is_task(t.run) for t in trials) or subword else "per character"
    return f"`{m}` ({unit})"


def _scored_whole_split(t: Trial) -> bool:
    """A run's final evaluation scored the whole held-out split: its `eval/full_split`
    marker, or its config (`train.final_eval: full` on a text corpus; runs from before that
    field existed scored the sampled windows)."""
    if "eval/full_split" in t.run.metrics:
        return t.run.metrics["eval/full_split"] == 1.0
    p = t.run.params
    return p.get("train.final_eval") == "full" and not is_task(t.run)


def final_note(trials: list[Trial], metric: str = "") -> str:
    """What the final value of each run scored, and how many held-out tokens."""
    done = [t for t in trials if t.final is not None]
    if not done:
        return "final: no finished run"
    if metric == "val/mean_bpb":  # data.phases: forgetting is measured on the same windows
        return "final: each phase's sampled held-out windows, the same at every evaluation"
    full = [t for t in done if _scored_whole_split(t)]
    budget = [t for t in done if "eval/final_budget_columns" in t.run.metrics]
    counts = sorted({int(t.run.metrics.get("data/val_tokens", 0)) for t in done})
    n = f"{counts[0]:,}" if len(counts) == 1 else f"{counts[0]:,} to {counts[-1]:,}"
    if len(full) == len(done):
        return f"final: whole held-out split, {n} tokens"
    if budget and len(budget) + len(full) == len(done):
        cols = sorted({int(t.run.metrics["eval/final_budget_columns"]) for t in budget})
        each = f"{cols[0]:,}" if len(cols) == 1 else f"{cols[0]:,} to {cols[-1]:,}"
        rows = sorted({t.run.params.get("data.batch_size", "B") for t in budget})
        whole = f"; {len(full)} runs scored the whole split" if full else ""
        return (
            f"final: a token budget (train.final_eval_tokens), the first {each} tokens of "
            f"each of the {'/'.join(map(str, rows))} contiguous rows of the held-out split, "
            f"{n} tokens{whole}"
        )
    if not full and all(is_task(t.run) for t in done):
        return (
            "final: the generated held-out set (the same batches every evaluation), "
            f"{n} scored tokens"
        )
    if not full:
        return f"final: the sampled held-out windows of every evaluation, {n} tokens"
    return f"final: whole held-out split for {len(full)} of {len(done)} runs, {n} tokens"


def rerun_command(ctx: Context, which: str) -> str:
    """`nlsweep rerun SPEC ROW_OR_RUN_ID`: the trial(s) again through Ray and MLflow, with
    the config their runs recorded, compared with them (`nlsweep.execution.rerun`)."""
    parts = ["nlsweep", "rerun", spec_shown(ctx.sweep.parent.tags, ctx.name), which]
    if ctx.sweep.tracking_uri != absolute_uri(DEFAULT_TRACKING_URI):
        parts += ["--tracking-uri", ctx.sweep.tracking_uri]
    return shlex.join(parts)


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in body]
    return lines


def grid_section(
    rows: list[Row], ctx: Context, fig_dir: Path, md_dir: Path, notes: list[str] = ()
) -> list[str]:
    """The main table (`notes` go right under it), learning curves and the rows' runs."""
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
        f"MDE ({ctx.power:.0%} power)",
        "best during training",
        "tokens/s",
        "wall s",
    ]
    body = []
    shown = shown_rows(rows, ctx.mode, MAX_ROWS)
    for i, r in ((i + 1, rows[i]) for i in shown):
        s, c = r.summary, r.comparison
        mde = _fmt(r.detect.mde) if r.detect else "—"
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
            mde,
            _fmt(r.best.mean),
            _fmt(r.tokens_per_s, 0),
            _fmt(r.wall_s, 1),
        ]
        if r is best:
            cells = [f"**{c}**" for c in cells]
        body.append(cells)
    out = [
        f"Main table: the **final** held-out {metric_label(m, trials)} of each run (the value "
        f"at its last evaluation; {final_note(trials, ctx.metric)}), pooled over seeds; the "
        "learning curves' earlier points score the sampled windows. 'best during training' is the "
        "mean of each run's "
        f"best evaluation. Bold: the best row ({ctx.mode}). ≈ : the 95% CI of the "
        "difference contains 0, so the row is not distinguishable from the baseline. "
        "Intervals are per row (unadjusted); p-values are Holm-adjusted across the rows "
        "compared with the baseline, so a row can have an interval that excludes 0 and a "
        "p-value above 0.05. MDE: the smallest difference the row's comparison detects with "
        f"{ctx.power:.0%} power at the level Holm tests it at, given its seeds and spread.",
        "",
    ]
    if len(shown) < len(rows):
        out += [f"{len(rows)} rows: the baseline and the best {MAX_ROWS} are shown; every row, "
                f"with its run ids, is in {rel(fig_dir / 'table.csv', md_dir)}.", ""]  # fmt: skip
    out += _table(header, body)
    out += notes
    drawn = shown_rows(rows, ctx.mode, MAX_CURVES)
    curves = {
        rows[i].label: [t.run.history.get(m, []) for t in rows[i].trials if t.final is not None]
        for i in drawn
    }
    curves = {k: v for k, v in curves.items() if v}
    if curves:
        figures.learning_curves(curves, m, fig_dir / "curves.png")
        some = f" (the baseline and the best {MAX_CURVES} rows)" if len(drawn) < len(rows) else ""
        out += ["", f"![learning curves{some}]({rel(fig_dir / 'curves.png', md_dir)})"]
    out += ["", "### Rows: MLflow runs, and how to re-run a row on the record", ""]
    for i, r in ((i + 1, rows[i]) for i in shown):
        links = ", ".join(
            run_link(ctx.sweep.tracking_uri, ctx.sweep.experiment_id, t.run.run_id)
            + f" (seed {t.seed})"
            for t in r.trials
        )
        out.append(f"- R{i} `{r.label}`: runs {links}")
        out.append(f"  `{rerun_command(ctx, f'R{i}')}`")
    return out


def sampled_section(trials: list[Trial], ctx: Context, fig_dir: Path, md_dir: Path) -> list[str]:
    m = ctx.metric
    frame = trials_frame(trials, ctx)
    done = frame.dropna(subset=["final"])
    ranked = done.sort_values("final", ascending=ctx.mode == "min", kind="stable")
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
            *(_short(row[f]) for f in ctx.factors),
            str(row["seed"]),
            _fmt(row["final"]),
            _fmt(row["best"]),
            run_link(ctx.sweep.tracking_uri, ctx.sweep.experiment_id, row["run_id"]),
        ]
        for i, (_, row) in enumerate(ranked.head(TOP_K).iterrows(), 1)
    ]
    out = [
        f"{ctx.algorithm} search: {len(trials)} trials, {len(done)} finished. The top "
        f"{min(TOP_K, len(done))} by final held-out {metric_label(m, trials)} ({ctx.mode}; "
        f"{final_note(trials, ctx.metric)}):",
        "",
    ]
    out += _table(header, body)
    out += importance_section(frame, ctx, fig_dir, md_dir)
    if len(ranked):
        best = ranked.iloc[0]["run_id"][:8]
        out += ["", f"Re-run the best trial on the record: `{rerun_command(ctx, best)}`"]
    frame.drop(columns=["config"]).to_csv(fig_dir / "table.csv", index=False)
    return out


def importance_section(frame, ctx: Context, fig_dir: Path, md_dir: Path) -> list[str]:
    """fANOVA importance and Optuna's plots, on a study rebuilt from the runs."""
    space = {f: ctx.space[f] for f in ctx.factors if f in ctx.space}
    study = importance.rebuild_study(frame, space, ctx.mode)
    n = importance.complete(study)
    stopped = int(frame["stopped"].sum())
    out = ["", "### Which factors mattered", ""]
    scores = importance.importances(study)
    ran = f"the {n} trials that ran to the end" + (
        f" ({stopped} stopped early by the scheduler are not scored)" if stopped else ""
    )
    if scores:
        out += [
            f"Hyperparameter importance: Optuna's fANOVA evaluator (seed "
            f"{importance.FANOVA_SEED}) on a study rebuilt from the MLflow runs, over {ran}. "
            "The shares sum to 1; with few trials they are rough.",
            "",
        ]
        out += _table(["factor", "importance"], [[f, f"{v:.3f}"] for v, f in _by_share(scores)])
    else:
        out.append(f"Importance needs at least two trials that ran to the end ({ran}).")
    for title, png in importance.optuna_plots(study, list(scores), fig_dir).items():
        out += ["", f"![{title} (Optuna)]({rel(png, md_dir)})"]
    return out


def _by_share(scores: dict[str, float]) -> list[tuple[float, str]]:
    return sorted(((v, f) for f, v in scores.items()), reverse=True)


def main_effects_section(rows: list[Row], ctx: Context) -> list[str]:
    trials = [t for r in rows for t in r.trials]
    frame = trials_frame(trials, ctx)
    order = {f: ctx.space.get(f, {}).get("grid", []) for f in ctx.factors}
    effects = importance.main_effects(frame, ctx.factors, order)
    if not effects:
        return []
    names = short_names(ctx.factors)
    body = [
        [names[e.factor], _short(v), str(s.n), f"{_fmt(s.mean)} ± {_fmt(s.std)}", _ci(s.ci)]
        + [_fmt(e.share, 3) if i == 0 else ""]
        for e in effects
        for i, (v, s) in enumerate(e.levels)
    ]
    return [
        "",
        "### Main effects",
        "",
        f"Each factor's marginal mean of the final {metric_label(ctx.metric, trials)}: the "
        "finished runs at each of its values, pooled over the other factors and the seeds "
        "(95% t-interval), and the share of the variance of the final values between its "
        "values (eta², sum of squares between values over the total). Shares that sum to "
        "well below 1 leave the rest to interactions and seed noise.",
        "",
        *_table(["factor", "value", "n", "mean ± std", "95% CI", "share of variance"], body),
    ]


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def plugin_rows(tags: dict[str, str]) -> list[list[str]]:
    """The header's row naming the sweep's plugins, their versions and source digests."""
    try:
        plugins = json.loads(tags.get(TAG_PLUGINS, "[]"))
    except ValueError:
        return [["plugins", "unreadable record"]]
    if not plugins:
        return []
    said = []
    for p in plugins:
        version = f" {p['version']}" if p.get("version") else ""
        said.append(f"`{p.get('name')}`{version} (sha256 `{(p.get('digest') or '?')[:16]}`)")
    return [["plugins", "; ".join(said)]]


def data_rows(trials: list[Trial]) -> list[list[str]]:
    """The header's data row: the corpus and its path, or a mixture's sources with their
    weights and shares (from the runs' params, read as literals only)."""
    seen = []
    for t in trials:
        p = t.run.params
        corpus = p.get("data.corpus")
        if corpus is None or corpus == "phases":
            continue
        text = f"`{corpus}`"
        try:
            mixture = ast.literal_eval(p.get("data.mixture", "None"))
        except (ValueError, SyntaxError):
            mixture = None
        if isinstance(mixture, list) and mixture:
            total = sum(float(m.get("weight", 1.0)) for m in mixture if isinstance(m, dict))
            parts = [
                f"{m.get('name') or f'source{i}'} (`{m.get('path')}`, weight "
                f"{float(m.get('weight', 1.0)):g}, {100 * float(m.get('weight', 1.0)) / total:.0f}%"
                " of training documents)"
                for i, m in enumerate(mixture)
                if isinstance(m, dict)
            ]
            text += f", a mixture of {len(parts)} sources: " + "; ".join(parts)
            text += " (drawn by weight, seeded; held-out: every source's, pooled)"
        elif p.get("data.path"):
            text += f" from `{p['data.path']}`"
        if text not in seen:
            seen.append(text)
    return [["data", "<br>".join(seen)]] if seen else []


def header_section(ctx: Context, trials: list[Trial], extra: list[list[str]] = ()) -> list[str]:
    p = ctx.sweep.parent
    hw = sorted({t.run.tags[TAG_HARDWARE] for t in trials if TAG_HARDWARE in t.run.tags})
    compute = sum(t.run.metrics.get("perf/elapsed_s", 0.0) for t in trials)
    spec_file = spec_shown(p.tags, "?")
    rows = [
        ["spec", f"`{spec_file}` (sha256 `{p.tags.get(TAG_SHA, '?')[:16]}`)"],
        ["project commit", f"`{p.tags.get(TAG_COMMIT, 'unknown')}`"],
        *plugin_rows(p.tags),
        [
            "sweep",
            f"parent run `{p.run_id}` of experiment `{ctx.name}` in `{ctx.sweep.tracking_uri}`",
        ],
        ["dates", f"{_date(p.start_ms)} to {_date(p.end_ms)}"],
        ["hardware", "; ".join(hw) or "not recorded"],
        *data_rows(trials),
        ["compute", f"{len(trials)} trials, {compute:.1f} trial-seconds ({compute / 3600:.3f} h)"],
        *extra,
        ["wall time, forecast vs actual", forecast_vs_actual(p)],
        [
            "objective",
            f"{metric_label(ctx.metric, trials)} ({ctx.mode}) on held-out data; "
            f"{ctx.algorithm} search; {final_note(trials, ctx.metric)}",
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


def forecast_vs_actual(parent) -> str:
    """The forecast the sweep recorded as it started, and its parent run's start to end."""
    actual = (parent.end_ms - parent.start_ms) / 1000 if parent.end_ms else None
    said = f"actual {duration(actual)}" if actual is not None else "actual: not ended"
    if TAG_RESUMED in parent.tags:
        said += f" (resumed {parent.tags[TAG_RESUMED]} time(s): includes the time between)"
    if TAG_FORECAST_S not in parent.tags:
        return f"no forecast (no earlier trials of these sizes when it started); {said}"
    forecast = float(parent.tags[TAG_FORECAST_S])
    ratio = f", {actual / forecast:.2f}x the forecast" if actual and forecast > 0 else ""
    return f"forecast {parent.tags.get(TAG_FORECAST, duration(forecast))}; {said}{ratio}"


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
    """The main table, one line per row, with the full-precision numbers and run ids."""
    records = []
    for i, r in enumerate(rows, 1):
        s, c = r.summary, r.comparison
        records.append(
            {
                "row": f"R{i}",
                **{f: r.factors.get(f) for f in ctx.factors},
                "n": s.n,
                "mean": s.mean,
                "std": s.std,
                "ci_low": s.ci[0] if s.ci else None,
                "ci_high": s.ci[1] if s.ci else None,
                "diff": c.diff if c else None,
                "diff_ci_low": c.ci[0] if c and c.ci else None,
                "diff_ci_high": c.ci[1] if c and c.ci else None,
                "paired": c.paired if c else None,
                "p": c.p if c else None,
                "p_holm": r.p_holm,
                "mde": r.detect.mde if r.detect else None,
                "best_mean": r.best.mean,
                "tokens_per_s": r.tokens_per_s,
                "wall_s": r.wall_s,
                "baseline": r.is_baseline,
                "run_ids": " ".join(t.run.run_id for t in r.trials),
            }
        )
    pd.DataFrame.from_records(records).to_csv(path, index=False)
