"""Duplicate removal: exact on normalized text, then near-duplicates by embedding cosine.

Both passes keep the first occurrence in input order, so the result does not depend on anything
but the input order. The near-duplicate pass is greedy over kept points: a point is dropped when
its cosine similarity to an earlier *kept* point exceeds the threshold. Hence every dropped point
has a kept near-twin and the kept points are pairwise at most the threshold apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from polymath.text import normalize_text


@dataclass(frozen=True)
class DedupStats:
    """Counts of one deduplication."""

    n_input: int
    exact_duplicates: int
    near_duplicates: int
    n_kept: int


def exact_keep_mask(texts: list[str]) -> np.ndarray:
    """True for the first occurrence of each normalized text."""
    seen: set[str] = set()
    keep = np.zeros(len(texts), dtype=bool)
    for i, text in enumerate(texts):
        norm = normalize_text(text)
        if norm not in seen:
            seen.add(norm)
            keep[i] = True
    return keep


def near_keep_mask(
    X: np.ndarray,
    threshold: float,
    *,
    block: int = 2048,
    exact_limit: int = 50_000,
    partition_size: int = 8192,
    seed: int = 0,
    kmeans_backend: str = "auto",
) -> np.ndarray:
    """True for points kept by greedy near-duplicate removal over L2-normalized rows of ``X``.

    Up to ``exact_limit`` points the greedy pass is exact (blocked, memory O(block^2 + block*n)).
    Above it, points are first split into k-means partitions of about ``partition_size`` and the
    pass runs inside each partition: near-duplicates at a high threshold sit almost on top of each
    other, so they share a partition, and the cost drops from O(n^2 d) to O(n * partition_size * d).
    """
    n = len(X)
    if threshold >= 1.0 or n == 0:
        return np.ones(n, dtype=bool)
    if n <= exact_limit:
        return _greedy_keep(X, threshold, block)
    from .clustering import fit_kmeans

    n_parts = -(-n // partition_size)
    _, labels = fit_kmeans(X, n_parts, seed=seed, backend=kmeans_backend)
    keep = np.zeros(n, dtype=bool)
    for part in np.unique(labels):
        members = np.flatnonzero(labels == part)  # ascending: input order is kept inside a partition
        keep[members] = _greedy_keep(X[members], threshold, block)
    return keep


def _greedy_keep(X: np.ndarray, threshold: float, block: int) -> np.ndarray:
    n, d = X.shape
    keep = np.zeros(n, dtype=bool)
    kept_vectors = np.empty((n, d), dtype=np.float32)
    n_kept = 0
    column_chunk = 16_384
    for lo in range(0, n, block):
        hi = min(lo + block, n)
        Xb = np.ascontiguousarray(X[lo:hi], dtype=np.float32)
        alive = np.ones(hi - lo, dtype=bool)
        for c in range(0, n_kept, column_chunk):
            sims = Xb @ kept_vectors[c : min(c + column_chunk, n_kept)].T
            alive &= sims.max(axis=1) <= threshold
        inner = Xb @ Xb.T
        # inside a block the greedy order matters: a point only removes later points while it is kept
        for i in range(hi - lo):
            if alive[i]:
                alive[i + 1 :] &= inner[i, i + 1 :] <= threshold
        idx = np.flatnonzero(alive)
        keep[lo + idx] = True
        kept_vectors[n_kept : n_kept + len(idx)] = Xb[idx]
        n_kept += len(idx)
    return keep
