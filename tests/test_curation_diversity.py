import math

import numpy as np
import pytest

from curation.diversity import METRIC_NAMES, cluster_entropy, diversity_metrics, metrics_frame, vendi_score


def unit(rows):
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    X = unit(rng.standard_normal((40, 6)))
    labels = rng.integers(0, 5, size=40)
    domains = np.array(["alg", "geo", "num"])[rng.integers(0, 3, size=40)]
    selected = np.array([3, 17, 8, 25, 31, 0])
    return X, labels, domains, selected


def test_every_metric_matches_its_formula(data):
    X, labels, domains, selected = data
    got = diversity_metrics(X, selected, labels, 5, domains)

    # coverage: loops over pairs, cosine distance to the nearest selected point
    cover = [min(1 - float(X[i] @ X[j]) for j in selected) for i in range(len(X))]
    assert got["mean_coverage"] == pytest.approx(np.mean(cover), abs=1e-6)
    assert got["max_coverage"] == pytest.approx(max(cover), abs=1e-6)
    fl = np.mean([max(0.0, max(float(X[i] @ X[j]) for j in selected)) for i in range(len(X))])
    assert got["facility_location"] == pytest.approx(fl, abs=1e-6)

    # Vendi: exp(-sum lambda log lambda) over eigenvalues of K/m, K the cosine kernel
    Y = X[selected].astype(np.float64)
    m = len(Y)
    K = np.array([[float(a @ b) for b in Y] for a in Y])
    lam = np.clip(np.linalg.eigvalsh(K / m), 0, None)
    lam = lam[lam > 1e-12]
    assert got["vendi"] == pytest.approx(math.exp(-sum(v * math.log(v) for v in lam)), rel=1e-6)

    hist = np.bincount(labels[selected], minlength=5) / m
    entropy = -sum(p * math.log(p) for p in hist if p > 0) / math.log(5)
    assert got["cluster_entropy"] == pytest.approx(entropy, abs=1e-12)
    assert got["clusters_hit"] == len(set(labels[selected].tolist()))
    for name in ("alg", "geo", "num"):
        assert got[f"domain:{name}"] == sum(1 for i in selected if domains[i] == name)
    assert set(METRIC_NAMES) <= set(got)


def test_vendi_from_covariance_equals_vendi_from_kernel():
    rng = np.random.default_rng(1)
    for m, d in [(5, 20), (30, 8), (64, 64)]:
        Y = unit(rng.standard_normal((m, d)))
        assert vendi_score(Y, "kernel") == pytest.approx(vendi_score(Y, "covariance"), rel=1e-9)


def test_vendi_extremes():
    Y = unit(np.eye(7))
    assert vendi_score(Y) == pytest.approx(7.0)  # orthogonal: every item its own mode
    assert vendi_score(unit(np.ones((9, 4)))) == pytest.approx(1.0)  # identical: one mode


def test_cluster_entropy_extremes():
    assert cluster_entropy(np.array([0, 1, 2, 3]), 4) == pytest.approx(1.0)
    assert cluster_entropy(np.array([2, 2, 2]), 4) == 0.0
    assert cluster_entropy(np.array([0, 0]), 1) == 0.0


def test_full_selection_covers_every_point(data):
    X, labels, _, _ = data
    got = diversity_metrics(X, np.arange(len(X)), labels, 5)
    assert got["mean_coverage"] == pytest.approx(0.0, abs=1e-6)
    assert got["max_coverage"] == pytest.approx(0.0, abs=1e-6)
    assert got["clusters_hit"] == len(np.unique(labels))


def test_metrics_frame_is_long_format_with_zero_domain_counts(data):
    X, labels, domains, selected = data
    only_alg = np.flatnonzero(domains == "alg")[:3]
    frame = metrics_frame(X, [("kcenter", 0, selected), ("random", 1, only_alg)], labels, 5, domains)
    assert list(frame.columns) == ["strategy", "seed", "metric", "value"]
    per_run = len(METRIC_NAMES) + 3
    assert len(frame) == 2 * per_run
    rows = frame[(frame.strategy == "random") & (frame.seed == 1)].set_index("metric").value
    assert rows["domain:alg"] == 3 and rows["domain:geo"] == 0 and rows["domain:num"] == 0
    assert frame.value.dtype == np.float64 and frame.seed.dtype == np.int64
