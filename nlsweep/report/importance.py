"""Which factors mattered: Optuna's importance and plots for sampled sweeps, main effects for grids.

Sampled (random / optuna) sweeps: the trials read back from MLflow become an in-memory Optuna
study (`rebuild_study`), each with the distribution the spec sampled it from, so that Optuna's
own tools apply unchanged: fANOVA importance (`FanovaImportanceEvaluator`, seeded) and its
matplotlib plots (optimisation history, slice, contour of the two most important factors).
Trials that ran to the end are COMPLETE; trials a scheduler stopped early are PRUNED with their
last value as an intermediate value, so they show in the history but do not bias the
importance towards the values they reached at fewer steps.

Grid sweeps: `main_effects`, each factor's marginal mean per value over every finished run
(other factors and seeds pooled) with its 95% interval, and the share of the variance of the
final objective the factor explains (eta squared: between-value sum of squares over the total).
In a full grid each factor's values are balanced across the others, so the shares of a purely
additive result sum to 1; what is left is interaction and seed noise.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd

from nlsweep.report.stats import Summary, summarize

FANOVA_SEED = 0


def _categorical(values) -> tuple[list, bool]:
    """Optuna's categorical choices hold scalars only: lists (CMS periods) go in as JSON."""
    scalar = all(v is None or isinstance(v, (bool, int, float, str)) for v in values)
    return (list(values) if scalar else [json.dumps(v) for v in values]), not scalar


def _distribution(spec_form: dict):
    form, v = next(iter(spec_form.items()))
    if form in ("grid", "choice"):
        return optuna.distributions.CategoricalDistribution(_categorical(v)[0])
    if form == "uniform":
        return optuna.distributions.FloatDistribution(v[0], v[1])
    if form == "loguniform":
        return optuna.distributions.FloatDistribution(v[0], v[1], log=True)
    return optuna.distributions.IntDistribution(v[0], v[1] - 1)  # randint excludes hi


def rebuild_study(frame: pd.DataFrame, space: dict[str, dict], mode: str) -> optuna.Study:
    """An Optuna study of the sweep's trials (frame rows in start order): each trial's swept
    values, final objective (COMPLETE) or, when stopped early (`stopped`), PRUNED."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize" if mode == "min" else "maximize")
    dists = {f: _distribution(d) for f, d in space.items()}
    for _, row in frame.iterrows():
        if pd.isna(row["final"]):
            continue
        params = {}
        for f, d in dists.items():
            v = row[f]
            if isinstance(d, optuna.distributions.CategoricalDistribution):
                jsoned = _categorical(next(iter(space[f].values())))[1]
                v = json.dumps(v) if jsoned else v
            params[f] = v
        value = float(row["final"])
        if row["stopped"]:
            trial = optuna.trial.create_trial(
                params=params,
                distributions=dists,
                intermediate_values={int(row["last_step"]): value},
                state=optuna.trial.TrialState.PRUNED,
            )
        else:
            trial = optuna.trial.create_trial(params=params, distributions=dists, value=value)
        study.add_trial(trial)
    return study


def complete(study: optuna.Study) -> int:
    return len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))


def importances(study: optuna.Study) -> dict[str, float]:
    """fANOVA importance of each factor (sums to 1), most important first; {} with fewer than
    two complete trials, where there is nothing to explain."""
    if complete(study) < 2:
        return {}
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=FANOVA_SEED)
    return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))


def _save(ax_or_axes, path: Path) -> None:
    import matplotlib.pyplot as plt

    ax = ax_or_axes.flat[0] if hasattr(ax_or_axes, "flat") else ax_or_axes
    fig = ax.get_figure()
    fig.set_size_inches(max(7.0, fig.get_size_inches()[0]), 4.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not tight_layout: it cannot place the contour's colorbar axes, and warns so.
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def optuna_plots(study: optuna.Study, ranked: list[str], fig_dir: Path) -> dict[str, Path]:
    """Optuna's own matplotlib plots of the study: {title: png}. The contour needs two
    factors (the two most important) and the others at least one complete trial."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as ovm

    out: dict[str, Path] = {}
    if complete(study) == 0:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        plots = [
            ("optimisation history", "history.png", lambda: ovm.plot_optimization_history(study)),
            ("slice", "slice.png", lambda: ovm.plot_slice(study)),
        ]
        if len(ranked) >= 2:
            pair = ranked[:2]
            plots.append(
                (
                    f"contour of {pair[0]} and {pair[1]}",
                    "contour.png",
                    lambda: ovm.plot_contour(study, params=pair),
                )
            )
        for title, name, draw in plots:
            _save(draw(), fig_dir / name)
            out[title] = fig_dir / name
    return out


@dataclass(frozen=True)
class Effect:
    factor: str
    levels: list[tuple[object, Summary]]
    """Each value of the factor (grid order) with the summary of the runs at it."""
    share: float
    """Share of the total variance of the final objective between this factor's values."""


def main_effects(frame: pd.DataFrame, factors: list[str], order: dict[str, list]) -> list[Effect]:
    """Each factor's marginal means (finished runs pooled over the other factors and seeds)
    and the share of variance it explains, eta^2 = sum_v n_v (mean_v - mean)^2 / sum (y - mean)^2.
    `order` gives each factor's values in grid order."""
    done = frame.dropna(subset=["final"])
    if done.empty:
        return []
    grand = done["final"].mean()
    total = float(((done["final"] - grand) ** 2).sum())
    effects = []
    for f in factors:
        key = done[f].map(json.dumps)
        groups = done.groupby(key, sort=False)["final"]
        between = float((groups.count() * (groups.mean() - grand) ** 2).sum())
        values = {json.dumps(v): v for v in order.get(f, [])}
        for k in key.unique():
            values.setdefault(k, json.loads(k))
        levels = [
            (v, summarize(done.loc[key == k, "final"]))
            for k, v in values.items()
            if (key == k).any()
        ]
        share = between / total if total > 0 else math.nan
        effects.append(Effect(f, levels, share))
    return effects
