"""Report figures (matplotlib, headless): learning curves (the rest are Optuna's own plots)."""

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


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
