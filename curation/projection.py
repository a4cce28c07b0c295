"""2-D PCA picture of a selection: every point in grey, the selected points highlighted."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from polymath.errors import SelectionError


def plot_projection(
    X: np.ndarray,
    selected_idx: np.ndarray,
    path: Path | str,
    *,
    title: str | None = None,
    max_background: int = 50_000,
    seed: int = 0,
) -> Path:
    """Write a PNG of the PCA projection of X (n x d) with ``selected_idx`` highlighted; returns the path.

    Above ``max_background`` points a seeded sample of the grey points is drawn (and the PCA is fit
    on it plus the selection): a million grey dots hide each other anyway and take minutes to draw.
    """
    # a bare Figure renders with Agg and leaves pyplot's global backend (a notebook's) untouched
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.decomposition import PCA

    X = np.asarray(X, dtype=np.float32)
    selected_idx = np.asarray(selected_idx, dtype=np.int64)
    if X.ndim != 2 or len(X) < 2:
        raise SelectionError(f"plot_projection needs at least 2 embeddings (n x d), got shape {X.shape}")
    if len(selected_idx) and (selected_idx.min() < 0 or selected_idx.max() >= len(X)):
        raise SelectionError(
            f"selected_idx must index rows of X (0..{len(X) - 1}); got values in "
            f"[{selected_idx.min()}, {selected_idx.max()}]: pass positions into X, not problem ids"
        )
    background = np.arange(len(X))
    if len(X) > max_background:
        background = np.sort(np.random.default_rng(seed).choice(len(X), max_background, replace=False))
    fit_rows = np.union1d(background, selected_idx)
    pca = PCA(n_components=2, random_state=seed).fit(X[fit_rows])
    bg = pca.transform(X[background])
    sel = pca.transform(X[selected_idx]) if len(selected_idx) else np.empty((0, 2))

    fig = Figure(figsize=(7, 6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.scatter(bg[:, 0], bg[:, 1], s=2, c="0.75", linewidths=0, label=f"all ({len(X):,})", rasterized=True)
    ax.scatter(sel[:, 0], sel[:, 1], s=10, c="tab:red", linewidths=0, label=f"selected ({len(selected_idx):,})")
    ratio = pca.explained_variance_ratio_
    ax.set_xlabel(f"PC1 ({ratio[0]:.1%})")
    ax.set_ylabel(f"PC2 ({ratio[1]:.1%})")
    ax.set_title(title or "selection in the PCA plane of the embeddings")
    ax.legend(loc="best", markerscale=3)
    fig.tight_layout()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)  # never a half-written PNG at ``path``
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path
