"""Report figures (matplotlib, headless): learning curves, factor scatter, search history."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def learning_curves(
    series: dict[str, list[list[tuple[int, float]]]], metric: str, path: Path
) -> None:
    """One line per configuration: the mean over seeds at each step, a band of +-1 std."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, runs in series.items():
        steps = sorted({s for run in runs for s, _ in run})
        by_step = [[v for run in runs for s, v in run if s == step] for step in steps]
        mean = np.array([np.mean(v) for v in by_step])
        std = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in by_step])
        (line,) = ax.plot(steps, mean, marker="o", ms=3, label=f"{label} (n={len(runs)})")
        if any(len(v) > 1 for v in by_step):
            ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"{metric} (held-out)")
    ax.set_title(f"{metric} during training: mean over seeds, band = +-1 std")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def factor_scatter(
    points: list[dict], factors: Sequence[str], metric: str, path: Path, log_x: set[str]
) -> None:
    """The final metric of every finished trial against each swept factor."""
    n = len(factors)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, f in zip(axes.flat, factors):
        xs = [p["factors"][f] for p in points]
        ys = [p["value"] for p in points]
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs):
            ax.scatter(xs, ys, s=18)
            if f in log_x:
                ax.set_xscale("log")
        else:
            cats = sorted({str(x) for x in xs})
            ax.scatter([cats.index(str(x)) for x in xs], ys, s=18)
            ax.set_xticks(range(len(cats)), cats)
        ax.set_xlabel(f)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"final {metric} against each factor")
    _save(fig, path)


def search_history(values: list[float], metric: str, mode: str, path: Path) -> None:
    """Final metric of each trial in start order, with the best so far."""
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(1, len(values) + 1)
    ax.scatter(x, values, s=18, label="trial")
    best = np.minimum.accumulate(values) if mode == "min" else np.maximum.accumulate(values)
    ax.step(x, best, where="post", color="C3", label="best so far")
    ax.set_xlabel("trial (start order)")
    ax.set_ylabel(metric)
    ax.set_title("search history")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
