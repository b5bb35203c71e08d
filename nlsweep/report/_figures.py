"""Report figures (matplotlib, headless): learning curves and needle accuracy against length
(the rest are Optuna's own plots)."""

from __future__ import annotations

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


def needle_curves(series: dict[tuple[str, str], dict[int, list[float]]], chance: float | None,
                  path: Path) -> None:  # fmt: skip
    """Accuracy against haystack length: one line per (configuration, mode), the mean over
    seeds at each length (solid: memory carried, dashed: fresh)."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for (label, mode), by_length in series.items():
        lengths = sorted(by_length)
        mean = [np.mean(by_length[n]) for n in lengths]
        n = max(len(v) for v in by_length.values())
        ax.plot(lengths, mean, marker="o", ms=3, ls="-" if mode == "carry" else "--",
                label=f"{label}, {mode} (n={n})")  # fmt: skip
    if chance is not None:
        ax.axhline(chance, color="grey", lw=0.8, ls=":", label=f"chance {chance:.2f}")
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("haystack length (tokens)")
    ax.set_ylabel("needle accuracy")
    ax.set_title("needle in a haystack: mean over seeds (solid carry, dashed fresh)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
