"""k-means on embeddings (scikit-learn MiniBatchKMeans) and nearest-point queries to centroids."""

from __future__ import annotations

import numpy as np
from sklearn.cluster import MiniBatchKMeans

_ROW_CHUNK = 16_384  # rows per distance block: 16k x 600 centroids x (4 B sims + 8 B argpartition) = 118 MB


def fit_kmeans(
    X: np.ndarray, k: int, *, seed: int, batch_size: int = 4096, labels: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """(centers k x d, label per row or None) of a seeded MiniBatchKMeans; k is clipped to the rows.

    ``labels=False`` skips scikit-learn's final full assignment pass, for callers that make their
    own pass over X anyway.
    """
    k = max(1, min(k, len(X)))
    model = MiniBatchKMeans(
        n_clusters=k,
        random_state=seed,
        batch_size=max(batch_size, min(len(X), 3 * k)),
        n_init=1,
        # k-means++ seeding on a sample of 3k points (2048 at least): scikit-learn's default of
        # 3 * batch_size makes seeding cost minutes at k = 600 for no measurable inertia gain
        init_size=min(len(X), max(3 * k, 2048)),
        max_no_improvement=10,
        compute_labels=labels,
    )
    model.fit(X)
    centers = model.cluster_centers_.astype(np.float32)
    return centers, (model.labels_.astype(np.int64) if labels else None)


def nearest_to_centers(
    X: np.ndarray, centers: np.ndarray, m: int, *, return_labels: bool = False
) -> tuple[np.ndarray, ...]:
    """For each center, its ``m`` nearest rows of L2-normalized ``X`` (nearest first) and their
    Euclidean distances; with ``return_labels``, also each row's nearest center.

    For unit rows ||x - c||^2 = 1 - 2 x.c + ||c||^2: per center the ranking is by x.c, per row by
    2 x.c - ||c||^2, so one blocked pass of X @ C^T answers both without the n x k matrix.
    """
    k = len(centers)
    m = min(m, len(X))
    sq_norms = np.einsum("ij,ij->i", centers, centers)
    best_sim = np.full((k, m), -np.inf, dtype=np.float32)
    best_idx = np.zeros((k, m), dtype=np.int64)
    labels = np.empty(len(X), dtype=np.int64) if return_labels else None
    for lo in range(0, len(X), _ROW_CHUNK):
        sims = centers @ X[lo : lo + _ROW_CHUNK].T  # k x rows
        if labels is not None:
            labels[lo : lo + sims.shape[1]] = np.argmax(2.0 * sims - sq_norms[:, None], axis=0)
        take = min(m, sims.shape[1])
        if take < sims.shape[1]:
            part = np.argpartition(sims, sims.shape[1] - take, axis=1)[:, -take:]
        else:
            part = np.tile(np.arange(sims.shape[1]), (k, 1))
        cand_sim = np.concatenate([best_sim, np.take_along_axis(sims, part, axis=1)], axis=1)
        cand_idx = np.concatenate([best_idx, part + lo], axis=1)
        # stable sort on (-sim) keeps earlier blocks first among ties: deterministic picks
        order = np.argsort(-cand_sim, axis=1, kind="stable")[:, :m]
        best_sim = np.take_along_axis(cand_sim, order, axis=1)
        best_idx = np.take_along_axis(cand_idx, order, axis=1)
    dist = np.sqrt(np.maximum(1.0 - 2.0 * best_sim + sq_norms[:, None], 0.0))
    if labels is not None:
        return best_idx, dist, labels
    return best_idx, dist
