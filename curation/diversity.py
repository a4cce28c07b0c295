"""Diversity of a selection S (m rows) out of L2-normalized embeddings X (n rows), cosine geometry.

- ``mean_coverage`` / ``max_coverage``: mean and max over all n points of the cosine distance
  1 - x_i . x_j to the nearest selected point (lower is better covered).
- ``facility_location``: (1/n) sum_i max_{j in S} max(0, x_i . x_j), the objective the
  facility-location strategy maximizes, normalized to [0, 1]; it equals 1 - mean_coverage except
  for points whose every similarity to S is negative.
- ``vendi``: exp of the Shannon entropy of the eigenvalues of K/m, K = Y Y^T the cosine kernel
  of the selected rows Y (Friedman & Dieng, 2023). K/m and Y^T Y/m share their non-zero
  eigenvalues, so above d selected rows the d x d form is used. Ranges from 1 to min(m, d).
- ``cluster_entropy``: Shannon entropy of the selected points' histogram over the K clusters of a
  k-means on all points, divided by log K (1 = spread evenly over all clusters; 0 when K = 1).
- ``clusters_hit``: how many of the K clusters hold a selected point.
- ``domain:<name>``: selected points per domain (every domain of the input, zeros included).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

METRIC_NAMES = ("mean_coverage", "max_coverage", "facility_location", "vendi", "cluster_entropy", "clusters_hit")
_ROW_CHUNK = 16_384


def nearest_selected_similarity(X: np.ndarray, selected: np.ndarray) -> np.ndarray:
    """Per point of X, the largest cosine similarity to a selected point (blocked over rows)."""
    if len(np.unique(selected)) == len(X):
        # every point is selected: each is its own nearest (x.x = 1 bounds x.y), skip the n x n work
        return np.ones(len(X), dtype=np.float32)
    Y = np.ascontiguousarray(X[selected])
    out = np.empty(len(X), dtype=np.float32)
    for lo in range(0, len(X), _ROW_CHUNK):
        out[lo : lo + _ROW_CHUNK] = (X[lo : lo + _ROW_CHUNK] @ Y.T).max(axis=1)
    return out


def vendi_score(Y: np.ndarray, method: str = "auto") -> float:
    """Vendi score of the rows of Y under the cosine kernel; ``method`` is "kernel" (m x m),
    "covariance" (d x d) or "auto" (the smaller of the two)."""
    m, d = Y.shape
    if m == 0:
        return 0.0
    Y = Y.astype(np.float64)
    if method == "auto":
        method = "covariance" if m > d else "kernel"
    if method not in ("kernel", "covariance"):
        raise ValueError(f"vendi method must be 'auto', 'kernel' or 'covariance', got {method!r}")
    gram = Y @ Y.T / m if method == "kernel" else Y.T @ Y / m
    # one BLAS thread: at this size (at most d or m rows) a threaded eigensolver gains little, and
    # on cores busy with other work it measured 100x slower (1.5 s vs 15 ms at 384 x 384)
    with threadpool_limits(limits=1, user_api="blas"):
        eig = np.linalg.eigvalsh(gram)
    eig = np.clip(eig, 0.0, None)
    eig = eig / eig.sum()  # trace is 1 for unit rows; dividing absorbs rounding
    eig = eig[eig > 0]
    return float(np.exp(-(eig * np.log(eig)).sum()))


def cluster_entropy(selected_labels: np.ndarray, n_clusters: int) -> float:
    """Entropy of the selected points' cluster histogram divided by log(n_clusters)."""
    if n_clusters < 2 or len(selected_labels) == 0:
        return 0.0
    p = np.bincount(selected_labels, minlength=n_clusters) / len(selected_labels)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum() / np.log(n_clusters))


def diversity_metrics(
    X: np.ndarray,
    selected: np.ndarray,
    cluster_labels: np.ndarray,
    n_clusters: int,
    domains: np.ndarray | None = None,
    domain_names: list[str] | None = None,
) -> dict[str, float]:
    """All metrics of one selection (indices into X) as {name: value}."""
    selected = np.asarray(selected, dtype=np.int64)
    best = nearest_selected_similarity(X, selected).astype(np.float64)
    coverage = np.maximum(1.0 - best, 0.0)  # rounding can put a point's self-distance a hair below 0
    out = {
        "mean_coverage": float(coverage.mean()),
        "max_coverage": float(coverage.max()),
        "facility_location": float(np.maximum(best, 0.0).mean()),
        "vendi": vendi_score(X[selected]),
        "cluster_entropy": cluster_entropy(cluster_labels[selected], n_clusters),
        "clusters_hit": float(len(np.unique(cluster_labels[selected]))),
    }
    if domains is not None:
        names = domain_names if domain_names is not None else sorted(set(domains.tolist()))
        picked = pd.Series(np.asarray(domains)[selected]).value_counts()
        for name in names:
            out[f"domain:{name}"] = float(picked.get(name, 0))
    return out


def metrics_frame(
    X: np.ndarray,
    selections: list[tuple[str, int, np.ndarray]],
    cluster_labels: np.ndarray,
    n_clusters: int,
    domains: np.ndarray | None = None,
) -> pd.DataFrame:
    """Long table (strategy, seed, metric, value), one block of rows per (strategy, seed, indices)."""
    names = sorted(set(np.asarray(domains).tolist())) if domains is not None else None
    rows = []
    for strategy, seed, selected in selections:
        values = diversity_metrics(X, selected, cluster_labels, n_clusters, domains, names)
        rows.extend((strategy, int(seed), metric, value) for metric, value in values.items())
    frame = pd.DataFrame(rows, columns=["strategy", "seed", "metric", "value"])
    return frame.astype({"strategy": str, "seed": "int64", "metric": str, "value": "float64"})
