"""Training curves of one or more experts as a PNG: entropy and reward against step.

Uses matplotlib's object API with the Agg canvas, so it neither needs a
display nor changes the pyplot backend of a notebook that imports it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from polymath.errors import DataError

REQUIRED_COLUMNS = {"expert", "step", "metric", "value"}


def plot_curves(steps: pd.DataFrame, path: Path, title: str | None = None) -> Path:
    """Draw entropy (mean, p10-p90 band, target) and reward/accuracy per step; one colour per expert."""
    missing = REQUIRED_COLUMNS - set(steps.columns)
    if missing:
        raise DataError(f"step table lacks columns {sorted(missing)}; pass the frame train_expert returns")
    wide = steps.pivot_table(index=["expert", "step"], columns="metric", values="value", aggfunc="mean")
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_entropy, ax_reward = fig.subplots(1, 2)
    for i, (expert, frame) in enumerate(wide.groupby(level="expert", sort=True)):
        frame = frame.droplevel("expert").sort_index()
        colour = f"C{i % 10}"
        x = frame.index.to_numpy()
        if "entropy" in frame:
            ax_entropy.plot(x, frame["entropy"], color=colour, label=str(expert))
        if {"entropy_p10", "entropy_p90"} <= set(frame.columns):
            ax_entropy.fill_between(x, frame["entropy_p10"], frame["entropy_p90"], color=colour, alpha=0.15)
        if "entropy_target" in frame and frame["entropy_target"].notna().any():
            ax_entropy.plot(x, frame["entropy_target"], color=colour, linestyle=":", linewidth=1)
        if "reward" in frame:
            ax_reward.plot(x, frame["reward"], color=colour, label=f"{expert} reward")
        if "accuracy" in frame:
            ax_reward.plot(x, frame["accuracy"], color=colour, linestyle="--", label=f"{expert} accuracy")
    ax_entropy.set(xlabel="step", ylabel="token entropy (nats)", title="entropy (band p10-p90, dotted target)")
    ax_reward.set(xlabel="step", ylabel="mean reward / accuracy", title="reward (solid), accuracy (dashed)")
    for ax in (ax_entropy, ax_reward):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
