"""Markdown ablation reports, read from MLflow (the source of truth) alone.

A report can be regenerated any time, from any machine that reaches the tracking store:
`nlsweep report SPEC_OR_NAME`, and automatically at the end of every sweep. It holds
    header       spec, its sha256, project commit, dates, hardware, total compute
    main table   grid sweeps: one row per configuration of the swept factors (seeds pooled):
                 n, mean +- std, 95% CI, difference to the baseline row with its CI
                 (paired by seed when the seeds match), Holm-adjusted p-value, the minimum
                 detectable effect, the best-during-training mean, tokens/s and wall time;
                 the best row in bold; under it, which comparisons are decided and which
                 under-powered, and the seeds `report.effect_of_interest` needs
    adaptive     sweeps with adaptive seeds: each row's sequential decision and the seeds
                 spent (and in the header, against a fixed design of the same power)
                 random/optuna sweeps: the top trials; fANOVA importance and Optuna's
                 history, slice and contour plots on a study rebuilt from the runs
    effects      grid sweeps: each factor's marginal means and share of variance
    continual    sweeps over data.phases: forgetting per phase with CIs, the phase matrix
    evaluations  lm-eval scores of each trial's final model per task, with the same statistics
    curves       the objective against the training step per configuration
    sanity       probable no-op factors, leaking splits, failed / diverged / stopped /
                 killed runs, and mechanisms that never fired
Next to `reports/<name>.md` go its figures (`reports/<name>/*.png`) and the table as CSV;
all of them are also uploaded to the sweep's parent run in MLflow (`report/`), replacing
the previous upload, so the tracking server shows the report beside the numbers.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from nlsweep.report.adaptive import progress_of
from nlsweep.report.continual import continual_section
from nlsweep.report.decisions import power_paragraph, seeds_row, sequential_section
from nlsweep.report.evaluation import evaluation_section
from nlsweep.report.render import (
    grid_section,
    header_section,
    main_effects_section,
    rel,
    sampled_section,
    write_csv,
)
from nlsweep.report.results import build_rows, read_context, read_trial
from nlsweep.report.sanity import sanity_section
from nlsweep.tracking.read import read_sweep
from nlsweep.tracking.store import TrackingError, publish_report


def write_report(
    tracking_uri: str,
    experiment: str,
    out: Path,
    parent_run_id: str | None = None,
    check: Callable[[], None] | None = None,
) -> Path:
    """Read the sweep from MLflow, write `out` (markdown), its figures and CSV; return `out`.
    `check` is called before the report is put in place: where it raises, the report is
    neither written nor stored in MLflow."""
    sweep = read_sweep(tracking_uri, experiment, parent_run_id)
    ctx = read_context(sweep)
    trials = [read_trial(r, ctx) for r in sweep.trials]
    out = Path(out)
    fig_dir = out.with_suffix("")
    fig_dir.mkdir(parents=True, exist_ok=True)
    rows = build_rows(trials, ctx) if ctx.algorithm == "grid" else []
    prog = progress_of(rows, ctx) if rows else None
    extra = [seeds_row(prog, ctx)] if prog else []
    lines = header_section(ctx, trials, extra) + ["", "## Results", ""]
    if ctx.algorithm == "grid":
        notes = power_paragraph(rows, ctx, adaptive=prog is not None)
        lines += grid_section(rows, ctx, fig_dir, out.parent, notes)
        if prog:
            lines += sequential_section(prog, rows)
        lines += main_effects_section(rows, ctx)
        write_csv(rows, ctx, fig_dir / "table.csv")
        lines += [
            "",
            f"The table as CSV: [{rel(fig_dir / 'table.csv', out.parent)}]"
            f"({rel(fig_dir / 'table.csv', out.parent)})",
        ]
    else:
        lines += sampled_section(trials, ctx, fig_dir, out.parent)
    lines += continual_section(trials, ctx)
    lines += evaluation_section(trials, ctx, fig_dir, out.parent)
    lines += ["", "## Sanity checks", "", *sanity_section(trials, ctx), ""]
    tmp = out.with_name(out.name + ".part")
    tmp.write_text("\n".join(lines))
    if check is not None:
        try:
            check()
        except BaseException:
            tmp.unlink()
            raise
    tmp.replace(out)  # a reader never sees half a report
    try:
        publish_report(tracking_uri, sweep.parent.run_id, out, fig_dir)
    except TrackingError as e:
        print(f"warning: {e}", file=sys.stderr)
    return out
