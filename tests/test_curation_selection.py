import itertools

import numpy as np
import pytest

from curation.clustering import fit_kmeans, nearest_to_centers
from curation.config import StrategyOptions
from curation.facility import (
    dense_similarity,
    exact_knn_graph,
    facility_location,
    greedy_dense,
    greedy_sparse,
    partition_candidate_graph,
)
from curation.selection import STRATEGIES, allocate, assign_nearest_distinct, balance, select
from polymath.errors import SelectionError


def unit(rows):
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def blobs(n_centers=6, per=15, d=12, noise=0.15, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_centers, d))
    points = np.repeat(centers, per, axis=0) + noise * rng.standard_normal((n_centers * per, d))
    return unit(points), np.repeat(np.arange(n_centers), per)


def test_registry_has_exactly_the_documented_strategies():
    assert set(STRATEGIES) == {
        "kmeans-centroid", "kmeans-stratified", "kcenter", "facility-location", "random", "full", "few-clusters",
        "kmeans-learnable",
    }


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_strategies_pick_k_distinct_rows_deterministically(name):
    X, labels = blobs()
    domains = np.array(["a", "b", "c"])[labels % 3]
    rates = np.linspace(0, 1, len(X))  # read only by the learnability strategy
    first = select(name, X, 10, seed=3, domains=domains, pass_rates=rates)
    again = select(name, X, 10, seed=3, domains=domains, pass_rates=rates)
    np.testing.assert_array_equal(first, again)
    expected = len(X) if name == "full" else 10
    assert len(first) == expected and len(np.unique(first)) == expected
    assert first.min() >= 0 and first.max() < len(X)


def test_random_depends_on_the_seed():
    X, _ = blobs()
    assert not np.array_equal(select("random", X, 10, seed=0), select("random", X, 10, seed=1))


# ---------- kmeans-centroid ----------


def test_centroid_picks_are_the_nearest_points_to_the_fitted_centroids():
    X, _ = blobs(n_centers=8, per=10)
    k = 8
    picks = select("kmeans-centroid", X, k, seed=5)
    centers, _ = fit_kmeans(X, k, seed=5, batch_size=StrategyOptions().kmeans_batch_size, labels=False)
    dist = np.linalg.norm(X[:, None, :] - centers[None, :, :], axis=2)  # n x k, brute force
    nearest = dist.argmin(axis=0)
    assert len(set(nearest.tolist())) == k  # well separated blobs: no two centroids share a point
    assert set(picks.tolist()) == set(nearest.tolist())
    sizes = np.bincount(dist.argmin(axis=1), minlength=k)
    # rank: larger clusters first
    pick_sizes = [sizes[np.flatnonzero(nearest == p)[0]] for p in picks]
    assert pick_sizes == sorted(pick_sizes, reverse=True)


def test_shared_nearest_points_go_to_the_closer_centroid():
    X = unit([[1, 0], [0.96, 0.28], [0.6, 0.8], [0, 1], [-0.6, 0.8]])
    centers = np.array([[0.99, 0.05], [0.98, 0.1], [0.9, 0.2], [0.0, 0.95]], dtype=np.float32)
    picks, labels = assign_nearest_distinct(X, centers)
    # brute force: all (center, row) pairs by increasing distance, first free row wins
    dist = np.linalg.norm(X[None, :, :] - centers[:, None, :], axis=2)
    ref = -np.ones(len(centers), dtype=int)
    used = set()
    for flat in np.argsort(dist, axis=None, kind="stable"):
        c, r = divmod(int(flat), len(X))
        if ref[c] < 0 and r not in used:
            ref[c] = r
            used.add(r)
    np.testing.assert_array_equal(picks, ref)
    assert len(set(picks.tolist())) == len(centers)
    np.testing.assert_array_equal(labels, dist.argmin(axis=0))


def test_nearest_to_centers_matches_brute_force_across_blocks(monkeypatch):
    import curation.clustering as clustering

    monkeypatch.setattr(clustering, "_ROW_CHUNK", 7)  # many blocks and a ragged last one
    X, _ = blobs(n_centers=4, per=9)
    centers = unit(np.random.default_rng(0).standard_normal((5, X.shape[1])))
    idx, dist, labels = nearest_to_centers(X, centers, 3, return_labels=True)
    full = np.linalg.norm(X[None, :, :] - centers[:, None, :], axis=2)
    np.testing.assert_array_equal(idx, np.argsort(full, axis=1)[:, :3])
    np.testing.assert_allclose(dist, np.sort(full, axis=1)[:, :3], atol=1e-5)
    np.testing.assert_array_equal(labels, full.argmin(axis=0))


def test_centroid_picks_beat_random_subsets_on_a_dense_and_a_spread_domain():
    """A big tight domain (templated prompts) beside a small spread one, as in the demo: the picks
    nearest k-means++-seeded centroids cover the set better and are more diverse than random ones
    (from random starts the centroids crowd into the tight domain and Vendi falls below random)."""
    from curation.diversity import vendi_score

    rng = np.random.default_rng(0)
    tight = rng.standard_normal(32) * 3 + 0.3 * rng.standard_normal((1500, 32))
    spread = rng.standard_normal(32) * 3 + 2.0 * rng.standard_normal((500, 32))
    X = unit(np.vstack([tight, spread]))

    def coverage(picks):
        return float((1 - (X @ X[picks].T).max(axis=1)).mean())

    randoms = [select("random", X, 60, seed=s) for s in range(3)]
    for seed in range(3):
        picks = select("kmeans-centroid", X, 60, seed=seed)
        assert vendi_score(X[picks]) > max(vendi_score(X[r]) for r in randoms)
        assert coverage(picks) < min(coverage(r) for r in randoms)


# ---------- kmeans-stratified ----------


def test_allocate_is_proportional_capped_and_exact():
    rng = np.random.default_rng(0)
    for _ in range(200):
        sizes = rng.integers(0, 30, size=rng.integers(1, 9))
        if sizes.sum() == 0:
            continue
        k = int(rng.integers(0, sizes.sum() + 1))
        q = allocate(sizes, k)
        assert q.sum() == k and (q <= sizes).all() and (q >= 0).all()
        assert (np.abs(q - sizes * k / sizes.sum()) < 1 + 1e-9).all()


def test_balance_is_as_even_as_the_caps_allow():
    rng = np.random.default_rng(1)
    for _ in range(200):
        sizes = rng.integers(0, 20, size=rng.integers(1, 7))
        k = int(rng.integers(0, sizes.sum() + 1))
        q = balance(sizes, k)
        assert q.sum() == k and (q <= sizes).all()
        # max-min fairness: a cell below another by 2 or more must be full
        for a, b in itertools.permutations(range(len(sizes)), 2):
            if q[a] < q[b] - 1:
                assert q[a] == sizes[a]


def test_stratified_counts_are_proportional_to_cluster_sizes():
    X, _ = blobs(n_centers=5, per=40, seed=2)
    X = X[: 40 * 5 - 37]  # uneven cluster sizes
    options = StrategyOptions(n_strata=5)
    picks = select("kmeans-stratified", X, 30, seed=4, options=options)
    _, labels = fit_kmeans(X, 5, seed=4, batch_size=options.kmeans_batch_size)
    sizes = np.bincount(labels, minlength=5)
    np.testing.assert_array_equal(np.bincount(labels[picks], minlength=5), allocate(sizes, 30))


def test_stratified_per_domain_balance_splits_the_budget_evenly():
    X, _ = blobs(n_centers=4, per=30, seed=3)
    domains = np.array(["big"] * 100 + ["small"] * 20)
    options = StrategyOptions(n_strata=4, per_domain_balance=True)
    picks = select("kmeans-stratified", X, 40, seed=0, domains=domains, options=options)
    counts = {d: int((domains[picks] == d).sum()) for d in ("big", "small")}
    assert counts == {"big": 20, "small": 20}
    unbalanced = select("kmeans-stratified", X, 40, seed=0, domains=domains, options=StrategyOptions(n_strata=4))
    assert int((domains[unbalanced] == "small").sum()) < 20


# ---------- few-clusters ----------


def test_few_clusters_takes_whole_clusters_in_seeded_order():
    X, _ = blobs(n_centers=6, per=15, seed=4)
    options = StrategyOptions(n_strata=6)
    picks = select("few-clusters", X, 40, seed=2, options=options)
    centers, labels = fit_kmeans(X, 6, seed=2, batch_size=options.kmeans_batch_size)
    order = np.random.default_rng(2).permutation(6)
    sizes = np.bincount(labels, minlength=6)
    # brute force: the shortest prefix of the cluster order that holds 40 rows
    need = int(np.searchsorted(np.cumsum(sizes[order]), 40)) + 1
    whole, last = order[: need - 1], order[need - 1]
    picked = np.bincount(labels[picks], minlength=6)
    assert set(np.flatnonzero(picked)) == set(order[:need].tolist())
    np.testing.assert_array_equal(picked[whole], sizes[whole])
    # the partly taken cluster gives its rows nearest the centroid
    members = np.flatnonzero(labels == last)
    sims = X[members] @ centers[last]
    taken = np.isin(members, picks)
    assert sims[taken].min() >= sims[~taken].max()


def test_few_clusters_is_less_diverse_than_centroid_picks():
    from curation.diversity import vendi_score

    X, _ = blobs(n_centers=12, per=20, d=16, seed=5)
    narrow = select("few-clusters", X, 24, seed=0, options=StrategyOptions(n_strata=12))
    spread = select("kmeans-centroid", X, 24, seed=0)
    assert vendi_score(X[narrow]) < vendi_score(X[spread])


# ---------- kcenter ----------


def covering_radius(X, picks):
    d = np.linalg.norm(X[:, None, :] - X[None, picks, :], axis=2)
    return d.min(axis=1).max()


@pytest.mark.parametrize("seed", range(6))
def test_kcenter_is_within_twice_the_optimal_radius(seed):
    rng = np.random.default_rng(seed)
    X = unit(rng.standard_normal((11, 5)))
    k = 3
    greedy = covering_radius(X, select("kcenter", X, k, seed=seed))
    optimum = min(covering_radius(X, list(s)) for s in itertools.combinations(range(len(X)), k))
    assert optimum <= greedy <= 2 * optimum + 1e-6


def test_kcenter_is_farthest_first():
    X, _ = blobs(n_centers=5, per=6)
    picks = select("kcenter", X, 6, seed=2)
    for step in range(1, len(picks)):
        dist = 1.0 - X @ X[picks[:step]].T
        nearest = dist.min(axis=1)
        nearest[picks[:step]] = -np.inf
        assert nearest[picks[step]] == pytest.approx(nearest.max(), abs=1e-6)


# ---------- facility-location ----------


def objective(X, picks):
    if len(picks) == 0:
        return 0.0
    return float(np.maximum(X @ X[picks].T, 0.0).max(axis=1).sum())


def naive_greedy(X, k):
    picks = []
    for _ in range(k):
        gains = [objective(X, picks + [j]) if j not in picks else -np.inf for j in range(len(X))]
        picks.append(int(np.argmax(gains)))
    return picks


def test_lazy_greedy_equals_naive_greedy():
    X, _ = blobs(n_centers=5, per=8, noise=0.4, seed=7)
    np.testing.assert_array_equal(greedy_dense(dense_similarity(X), 7), naive_greedy(X, 7))


def test_sparse_greedy_on_the_full_graph_equals_dense_greedy():
    X, _ = blobs(n_centers=6, per=10, noise=0.5, seed=8)
    dense = greedy_dense(dense_similarity(X), 12)
    sparse_picks = greedy_sparse(exact_knn_graph(X, len(X)), 12)
    np.testing.assert_array_equal(dense, sparse_picks)


def test_exact_knn_graph_matches_brute_force(monkeypatch):
    import curation.facility as facility

    monkeypatch.setattr(facility, "_BLOCK", 9)
    X, _ = blobs(n_centers=3, per=10, noise=0.3)
    G = exact_knn_graph(X, 4).tocsr()
    sims = X @ X.T
    for i in range(len(X)):
        row = G.getrow(i)
        assert set(row.indices.tolist()) == set(np.argsort(-sims[i])[:4].tolist())
        np.testing.assert_allclose(row.data, np.maximum(sims[i, row.indices], 0), atol=1e-6)


def test_candidate_graph_with_one_partition_and_every_candidate_is_exact():
    X, _ = blobs(n_centers=3, per=10, noise=0.3)
    exact = exact_knn_graph(X, 5).toarray()
    one_part = partition_candidate_graph(X, 5, partition_size=len(X), candidates_per_partition=len(X), seed=0)
    np.testing.assert_allclose(exact, one_part.toarray(), atol=1e-6)


def test_candidate_graph_links_points_to_candidates_of_their_partition():
    X, _ = blobs(n_centers=4, per=50, noise=0.3)
    G = partition_candidate_graph(X, 3, partition_size=50, candidates_per_partition=10, seed=1, min_candidates=60)
    columns = np.flatnonzero(np.diff(G.indptr) > 0)
    assert len(columns) == 4 * 15  # min_candidates raises 10 per partition to 60 / 4
    csr = G.tocsr()
    sims = X @ X.T
    for i in range(0, len(X), 17):
        row = csr.getrow(i)
        assert len(row.indices) == 3 and set(row.indices) <= set(columns)
        np.testing.assert_allclose(row.data, np.maximum(sims[i, row.indices], 0), atol=1e-6)


def test_sparse_and_candidate_paths_stay_close_to_dense_greedy():
    X, _ = blobs(n_centers=30, per=10, noise=0.2, seed=9)  # more clusters than picks
    k = 15
    dense_value = objective(X, list(facility_location(X, k, seed=0)))
    best_random = max(objective(X, list(np.random.default_rng(s).choice(len(X), k, replace=False))) for s in range(5))
    assert dense_value > best_random + 10
    knn = facility_location(X, k, seed=0, n_neighbors=20, dense_limit=10)
    parts = facility_location(X, k, seed=0, n_neighbors=20, dense_limit=10, exact_knn_limit=10, partition_size=64)
    sampled = facility_location(
        X, k, seed=0, n_neighbors=20, dense_limit=10, exact_knn_limit=10, partition_size=64, candidates_per_partition=8
    )
    for picks in (knn, parts, sampled):
        assert len(np.unique(picks)) == k
        # closes at least 3/4 of the gap between chance and dense greedy
        assert objective(X, list(picks)) >= best_random + 0.75 * (dense_value - best_random)


def test_greedy_sparse_fills_up_when_candidates_run_out():
    from scipy import sparse

    G = sparse.csc_matrix((np.array([1.0, 0.5], dtype=np.float32), ([0, 1], [2, 2])), shape=(5, 5))
    np.testing.assert_array_equal(greedy_sparse(G, 3), [2, 0, 1])


# ---------- errors ----------


def test_errors_name_the_problem_and_the_fix():
    X, _ = blobs()
    with pytest.raises(SelectionError, match=r"k=500.*n=90.*on_small_input"):
        select("kcenter", X, 500, seed=0)
    with pytest.raises(SelectionError, match="k=0"):
        select("random", X, 0, seed=0)
    with pytest.raises(SelectionError, match="curate.strategy: unknown 'kmeans'.*kcenter"):
        select("kmeans", X, 5, seed=0)
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(SelectionError, match="NaN"):
        select("kcenter", bad, 5, seed=0)
    with pytest.raises(SelectionError, match="empty"):
        select("random", np.empty((0, 4), dtype=np.float32), 1, seed=0)
    with pytest.raises(SelectionError, match="2-D"):
        select("random", np.ones(4, dtype=np.float32), 1, seed=0)


def test_every_strategy_owns_the_options_it_reads(monkeypatch):
    from curation.selection import STRATEGIES, Strategy, StrategyParams

    options = set(StrategyOptions.model_fields)
    for name, strategy in STRATEGIES.items():
        assert issubclass(strategy.Params, StrategyParams) and set(strategy.Params.model_fields) <= options, name
    assert STRATEGIES["kmeans-stratified"].parameters(StrategyOptions(n_strata=7)) == {
        "kmeans_batch_size": 4096, "kmeans_backend": "auto", "n_strata": 7, "per_domain_balance": False}
    assert STRATEGIES["random"].parameters(StrategyOptions(n_strata=7)) == {}
    assert [n for n, s in STRATEGIES.items() if s.needs_pass_rates] == ["kmeans-learnable"]
    # a strategy is handed its own parameters only: a knob it does not own cannot reach it
    seen = []
    few = STRATEGIES["few-clusters"]
    spy = Strategy(lambda X, k, *, options, **kw: seen.append(options) or few.fn(X, k, options=options, **kw), few.Params)
    monkeypatch.setitem(STRATEGIES._entries, "few-clusters", spy)
    picks = select("few-clusters", np.eye(6, dtype=np.float32), 2, seed=0, options=StrategyOptions(n_strata=3))
    assert len(picks) == 2 and seen[0].model_dump() == {"kmeans_batch_size": 4096, "kmeans_backend": "auto", "n_strata": 3}
