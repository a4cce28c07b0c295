import sys

import numpy as np
import pytest

import curation.clustering as clustering
from curation.clustering import assign_labels, faiss_available, fit_kmeans
from curation.config import StrategyOptions
from curation.selection import select
from polymath.errors import ConfigError


def blobs(seed=0, n_centers=5, per=40, d=10):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_centers, d)) * 3
    X = np.repeat(centers, per, axis=0) + rng.standard_normal((n_centers * per, d))
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32), np.repeat(np.arange(n_centers), per)


def inertia(X, centers):
    return float((np.linalg.norm(X[:, None, :] - centers[None], axis=2).min(axis=1) ** 2).sum())


def beats_random_centers(X, centers, k):
    rng = np.random.default_rng(123)
    best_random = min(inertia(X, X[rng.choice(len(X), k, replace=False)]) for _ in range(5))
    return inertia(X, centers) < best_random


def test_assign_labels_matches_brute_force(monkeypatch):
    monkeypatch.setattr(clustering, "_ROW_CHUNK", 13)
    X, _ = blobs()
    centers = np.random.default_rng(1).standard_normal((7, X.shape[1])).astype(np.float32)
    brute = np.linalg.norm(X[:, None, :] - centers[None], axis=2).argmin(axis=1)
    np.testing.assert_array_equal(assign_labels(X, centers), brute)


@pytest.mark.parametrize("lloyd_limit", [10**9, 0])  # full Lloyd, then mini-batches
def test_sklearn_kmeans_is_seeded_and_improves_on_random_centers(monkeypatch, lloyd_limit):
    monkeypatch.setattr(clustering, "_FULL_LLOYD_LIMIT", lloyd_limit)
    X, _ = blobs()
    centers, labels = fit_kmeans(X, 5, seed=0, backend="sklearn", batch_size=64)
    again, _ = fit_kmeans(X, 5, seed=0, backend="sklearn", batch_size=64)
    np.testing.assert_array_equal(centers, again)
    assert beats_random_centers(X, centers, 5)
    np.testing.assert_array_equal(labels, assign_labels(X, centers))


def test_k_is_clipped_to_the_rows():
    X, _ = blobs(per=1)
    centers, labels = fit_kmeans(X, 50, seed=0, backend="sklearn")
    assert len(centers) == 5 and len(np.unique(labels)) == 5


def test_unknown_or_missing_backend_is_a_config_error(monkeypatch):
    X, _ = blobs()
    with pytest.raises(ConfigError, match="unknown k-means backend 'cuml'"):
        fit_kmeans(X, 3, seed=0, backend="cuml")
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    assert not faiss_available()
    with pytest.raises(ConfigError, match="pip install faiss-cpu"):
        fit_kmeans(X, 3, seed=0, backend="faiss")
    # auto falls back to scikit-learn
    centers, _ = fit_kmeans(X, 3, seed=0, backend="auto")
    assert centers.shape == (3, X.shape[1])


@pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
def test_faiss_backend_is_seeded_and_serves_the_strategies():
    X, _ = blobs(per=60)
    centers, labels = fit_kmeans(X, 5, seed=2, backend="faiss")
    again, _ = fit_kmeans(X, 5, seed=2, backend="faiss")
    np.testing.assert_array_equal(centers, again)
    assert beats_random_centers(X, centers, 5)
    np.testing.assert_array_equal(labels, assign_labels(X, centers))
    options = StrategyOptions(kmeans_backend="faiss", n_strata=5)
    for name in ("kmeans-centroid", "kmeans-stratified"):
        picks = select(name, X, 10, seed=0, options=options)
        assert len(np.unique(picks)) == 10
