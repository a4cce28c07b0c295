"""Facility-location selection: lazy greedy on clipped cosine similarities.

Objective F(S) = sum_i max_{j in S} s_ij with s_ij = max(0, x_i . x_j) for L2-normalized rows.
F is monotone submodular, so greedy is within (1 - 1/e) of the optimum and lazy evaluation
(Minoux) returns exactly the greedy sequence while re-evaluating few candidates per step.

Similarities come from one of three sources, by size:
- n <= dense_limit: the exact n x n matrix;
- n <= exact_knn_limit: an exact k-nearest-neighbour graph (blocked brute force, O(n^2 d) time,
  O(n k) memory);
- larger (the approximation used at a million points): candidates from k-means partitions.
  Points are split into k-means partitions of about ``partition_size``; in each partition a
  seeded sample of ``candidates_per_partition`` members are the candidates, and every member is
  linked to its ``n_neighbors`` most similar candidates of its partition. Every point still
  counts in the objective; only the candidates can be picked, and similarities across
  partitions count as 0. Time O(n d (n_partitions + candidates_per_partition)), memory O(n k).
Similarities outside the graph count as 0, the standard sparse facility-location surrogate.
"""

from __future__ import annotations

import heapq

import numpy as np
from scipy import sparse

from .clustering import fit_kmeans

_BLOCK = 1024


def dense_similarity(X: np.ndarray) -> np.ndarray:
    """The n x n clipped cosine similarity matrix (small n only)."""
    S = X @ X.T
    np.maximum(S, 0.0, out=S)
    return S


def exact_knn_graph(X: np.ndarray, n_neighbors: int) -> sparse.csc_matrix:
    """Sparse n x n matrix holding, per row i, the clipped similarities to its ``n_neighbors`` most
    similar rows (itself included)."""
    n = len(X)
    kk = min(n_neighbors, n)
    rows = np.repeat(np.arange(n, dtype=np.int32), kk)
    cols = np.empty(n * kk, dtype=np.int32)
    vals = np.empty(n * kk, dtype=np.float32)
    for lo in range(0, n, _BLOCK):
        hi = min(lo + _BLOCK, n)
        sims = X[lo:hi] @ X.T
        top = _top_k(sims, kk)
        cols[lo * kk : hi * kk] = top.ravel()
        vals[lo * kk : hi * kk] = np.take_along_axis(sims, top, axis=1).ravel()
    np.maximum(vals, 0.0, out=vals)
    return sparse.csc_matrix((vals, (rows, cols)), shape=(n, n))


def partition_candidate_graph(
    X: np.ndarray,
    n_neighbors: int,
    partition_size: int,
    candidates_per_partition: int,
    *,
    seed: int,
    min_candidates: int = 0,
    kmeans_batch_size: int = 4096,
    kmeans_backend: str = "auto",
) -> sparse.csc_matrix:
    """Sparse n x n matrix: row i holds the clipped similarities of point i to its ``n_neighbors``
    most similar candidates inside its k-means partition; only candidates' columns are non-empty.

    At least ``min_candidates`` candidates are drawn in all (when the partitions hold that many),
    so a budget of k can be met with room to choose.
    """
    n = len(X)
    n_parts = max(1, -(-n // partition_size))
    _, labels = fit_kmeans(X, n_parts, seed=seed, batch_size=kmeans_batch_size, backend=kmeans_backend)
    per_part = max(candidates_per_partition, -(-min_candidates // n_parts))
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(n_parts + 1))
    rows_out, cols_out, vals_out = [], [], []
    for p in range(n_parts):
        members = order[bounds[p] : bounds[p + 1]]
        if len(members) == 0:
            continue
        if len(members) > per_part:
            candidates = np.sort(rng.choice(members, per_part, replace=False))
        else:
            candidates = members
        Xc = X[candidates]
        kk = min(n_neighbors, len(candidates))
        for lo in range(0, len(members), _BLOCK):
            block = members[lo : lo + _BLOCK]
            sims = X[block] @ Xc.T
            top = _top_k(sims, kk)
            rows_out.append(np.repeat(block.astype(np.int32), kk))
            cols_out.append(candidates[top].astype(np.int32).ravel())
            vals_out.append(np.take_along_axis(sims, top, axis=1).ravel())
    vals = np.maximum(np.concatenate(vals_out), 0.0)
    return sparse.csc_matrix((vals, (np.concatenate(rows_out), np.concatenate(cols_out))), shape=(n, n))


def _top_k(sims: np.ndarray, k: int) -> np.ndarray:
    if k >= sims.shape[1]:
        return np.tile(np.arange(sims.shape[1]), (sims.shape[0], 1))
    # partition for the k largest in place of negating: no n x block temporary
    return np.argpartition(sims, sims.shape[1] - k, axis=1)[:, -k:]


def greedy_dense(S: np.ndarray, k: int) -> np.ndarray:
    """Lazy greedy over a dense similarity matrix; ties go to the lower index."""
    columns = np.ascontiguousarray(S.T, dtype=np.float32)  # columns[j] = S[:, j], read contiguously
    cur = np.zeros(S.shape[0], dtype=np.float32)

    def gain(j: int) -> float:
        return float(np.maximum(columns[j] - cur, 0.0).sum(dtype=np.float64))

    def take(j: int) -> None:
        np.maximum(cur, columns[j], out=cur)

    upper = columns.sum(axis=1, dtype=np.float64)
    return _lazy_greedy(upper, k, gain, take)


def greedy_sparse(G: sparse.spmatrix, k: int) -> np.ndarray:
    """Lazy greedy where G[i, j] is the similarity of point i to candidate j (0 when absent)."""
    csc = sparse.csc_matrix(G, dtype=np.float32)
    csc.sum_duplicates()  # also sorts row indices: sums run in the same order as the dense path
    indptr, indices, data = csc.indptr, csc.indices, csc.data
    cur = np.zeros(G.shape[0], dtype=np.float32)

    def gain(j: int) -> float:
        rows = indices[indptr[j] : indptr[j + 1]]
        return float(np.maximum(data[indptr[j] : indptr[j + 1]] - cur[rows], 0.0).sum(dtype=np.float64))

    def take(j: int) -> None:
        rows = indices[indptr[j] : indptr[j + 1]]
        cur[rows] = np.maximum(cur[rows], data[indptr[j] : indptr[j + 1]])

    upper = np.asarray(csc.sum(axis=0, dtype=np.float64)).ravel()
    # only columns with entries can gain anything; a heap over the rest would be pure overhead
    candidates = np.flatnonzero(np.diff(indptr) > 0)
    picks = _lazy_greedy(upper[candidates], k, lambda c: gain(candidates[c]), lambda c: take(candidates[c]))
    picks = candidates[picks]
    if len(picks) < k:
        # fewer candidates than k (tiny partitions): fill with the lowest unpicked indices
        rest = np.setdiff1d(np.arange(G.shape[1]), picks)[: k - len(picks)]
        picks = np.concatenate([picks, rest])
    return picks


def _lazy_greedy(upper: np.ndarray, k: int, gain, take) -> np.ndarray:
    """Minoux's lazy greedy. Heap entries are (-upper bound, index); a popped candidate whose fresh
    gain still beats the next bound (ties: lower index) is the exact greedy choice, because gains
    only shrink (submodularity)."""
    heap = [(-float(u), j) for j, u in enumerate(upper)]
    heapq.heapify(heap)
    chosen: list[int] = []
    while len(chosen) < k and heap:
        _, j = heapq.heappop(heap)
        g = gain(j)
        if not heap or (-g, j) <= heap[0]:
            chosen.append(j)
            take(j)
        else:
            heapq.heappush(heap, (-g, j))
    return np.asarray(chosen, dtype=np.int64)


def facility_location(
    X: np.ndarray,
    k: int,
    *,
    seed: int,
    n_neighbors: int = 32,
    dense_limit: int = 4096,
    exact_knn_limit: int = 20_000,
    partition_size: int = 4096,
    candidates_per_partition: int = 128,
    kmeans_batch_size: int = 4096,
    kmeans_backend: str = "auto",
) -> np.ndarray:
    """Greedy facility-location picks (in pick order) over L2-normalized rows of ``X``."""
    n = len(X)
    if n <= dense_limit:
        return greedy_dense(dense_similarity(X), k)
    if n <= exact_knn_limit:
        G = exact_knn_graph(X, n_neighbors)
    else:
        G = partition_candidate_graph(
            X,
            n_neighbors,
            partition_size,
            candidates_per_partition,
            seed=seed,
            min_candidates=4 * k,
            kmeans_batch_size=kmeans_batch_size,
            kmeans_backend=kmeans_backend,
        )
    return greedy_sparse(G, k)
