"""Selection strategies, registered by name.

Every strategy takes L2-normalized embeddings X (n x d), a budget k <= n, a seed, optional
per-row domains and its own parameters, and returns k distinct row indices in rank order: pick order
for the greedy strategies (kcenter, facility-location), larger clusters first for kmeans-centroid,
draw order for the sampling ones, cluster by cluster for few-clusters. The same seed gives the same picks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from polymath.errors import SelectionError
from polymath.registry import Registry

from .clustering import fit_kmeans, nearest_to_centers
from .config import StrategyOptions
from .facility import facility_location


class StrategyParams(BaseModel):
    """The knobs one strategy reads: ``StrategyOptions`` field names (documented there), nothing else."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class KMeansParams(StrategyParams):
    kmeans_batch_size: int
    kmeans_backend: str


class FewClustersParams(KMeansParams):
    n_strata: int


class StratifiedParams(FewClustersParams):
    per_domain_balance: bool


class FacilityParams(KMeansParams):
    facility_neighbors: int
    facility_dense_limit: int
    facility_exact_knn_limit: int
    facility_partition_size: int
    facility_candidates_per_partition: int


@dataclass(frozen=True)
class Strategy:
    """A registered strategy: its function and the parameters it owns."""

    fn: Callable[..., np.ndarray]
    Params: type[StrategyParams]
    needs_pass_rates: bool = False
    """Whether it ranks by the learnability probe's pass rates (one per row)."""

    def params(self, options: StrategyOptions) -> StrategyParams:
        """This strategy's parameters, read from the curate config's options."""
        return self.Params(**{name: getattr(options, name) for name in self.Params.model_fields})

    def parameters(self, options: StrategyOptions) -> dict[str, Any]:
        """What it runs with (recorded in the curate run's manifest)."""
        return self.params(options).model_dump()


STRATEGIES: Registry[Strategy] = Registry("curate.strategy")


def register(name: str, params: type[StrategyParams] = StrategyParams, needs_pass_rates: bool = False):
    def add(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        STRATEGIES.add(name, Strategy(fn, params, needs_pass_rates))
        return fn

    return add


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise SelectionError(STRATEGIES.unknown(name))
    return STRATEGIES[name]


def validate_embeddings(X: np.ndarray, ids: list[str] | None = None) -> None:
    """Raise SelectionError unless X is a non-empty 2-D array of finite values."""
    if X.ndim != 2:
        raise SelectionError(f"embeddings must be a 2-D array (n x d), got shape {X.shape}")
    if len(X) == 0:
        raise SelectionError("no problems to select from; check the input set is not empty after filtering")
    # blocked: a full-size boolean mask would cost n x d bytes at a million rows
    bad = np.concatenate(
        [lo + np.flatnonzero(~np.isfinite(X[lo : lo + 65_536]).all(axis=1)) for lo in range(0, len(X), 65_536)]
    )
    if len(bad):
        names = [ids[i] for i in bad[:5]] if ids is not None else [str(i) for i in bad[:5]]
        raise SelectionError(
            f"{len(bad)} embeddings contain NaN or infinity (first: {', '.join(names)}); the embedding model "
            "produced invalid vectors: check those prompts are non-empty text and the model loads correctly"
        )


def select(
    name: str,
    X: np.ndarray,
    k: int,
    *,
    seed: int,
    domains: np.ndarray | None = None,
    options: StrategyOptions | None = None,
    pass_rates: np.ndarray | None = None,
) -> np.ndarray:
    """Run strategy ``name``; raises SelectionError for unknown names, bad embeddings or k outside [1, n].

    ``pass_rates`` (one per row: the base model's probe) reaches the strategies that rank by learnability.
    """
    strategy = get_strategy(name)
    validate_embeddings(X)
    n = len(X)
    if name != "full" and k < 1:
        raise SelectionError(f"curate.k must be at least 1, got k={k}; set curate.k to the number of problems to keep")
    if name != "full" and k > n:
        raise SelectionError(
            f"curate.k={k} but only n={n} distinct problems are available; lower curate.k to at most {n}, "
            "add problems, or set curate.on_small_input: clip to select all of them"
        )
    if domains is not None and len(domains) != n:
        raise SelectionError(f"got {len(domains)} domains for {n} embeddings; pass one domain per row")
    X = np.ascontiguousarray(X, dtype=np.float32)
    extra = {}
    if strategy.needs_pass_rates:
        if pass_rates is None or len(pass_rates) != n:
            raise SelectionError(f"strategy {name} needs one probe pass rate per row; set curate.probe_k")
        extra["pass_rates"] = np.asarray(pass_rates, dtype=np.float64)
    params = strategy.params(options or StrategyOptions())
    picks = strategy.fn(X, k, seed=seed, domains=domains, options=params, **extra)
    return np.asarray(picks, dtype=np.int64)


@register("full")
def full(X: np.ndarray, k: int, *, seed: int, domains=None, options: StrategyParams) -> np.ndarray:
    """Every row, in input order."""
    return np.arange(len(X))


@register("random")
def random(X: np.ndarray, k: int, *, seed: int, domains=None, options: StrategyParams) -> np.ndarray:
    """k rows uniformly without replacement."""
    return np.random.default_rng(seed).choice(len(X), size=k, replace=False)


@register("kmeans-centroid", KMeansParams)
def kmeans_centroid(X: np.ndarray, k: int, *, seed: int, domains=None, options: KMeansParams) -> np.ndarray:
    """The row nearest each of k k-means centroids, larger clusters first.

    When two centroids share a nearest row, (centroid, row) pairs are assigned greedily by
    increasing distance, so each centroid gets its nearest row not taken by a closer centroid.
    """
    centers, _ = fit_kmeans(
        X, k, seed=seed, batch_size=options.kmeans_batch_size, labels=False, backend=options.kmeans_backend
    )
    picks, labels = assign_nearest_distinct(X, centers)
    sizes = np.bincount(labels, minlength=len(centers))
    order = np.lexsort((np.arange(len(centers)), -sizes))  # by size descending, then centroid index
    return picks[order]


def assign_nearest_distinct(X: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(one distinct row per center, each row's nearest center); pairs are taken greedily by
    increasing distance (needs len(centers) <= n)."""
    k = len(centers)
    pick = np.full(k, -1, dtype=np.int64)
    taken = np.zeros(len(X), dtype=bool)
    m = 1  # collisions are rare: start with the nearest row only and widen for the losers
    idx, dist, labels = nearest_to_centers(X, centers, m, return_labels=True)
    open_centers = np.arange(k)
    while True:
        order = np.argsort(dist, axis=None, kind="stable")
        for flat in order:
            c, r = divmod(int(flat), idx.shape[1])
            center, row = open_centers[c], idx[c, r]
            if pick[center] < 0 and not taken[row]:
                pick[center] = row
                taken[row] = True
        open_centers = np.flatnonzero(pick < 0)
        if len(open_centers) == 0:
            return pick, labels
        # a center whose m candidates were all taken by closer centers looks further
        m = min(2 * m, len(X))
        idx, dist = nearest_to_centers(X, centers[open_centers], m)


def allocate(sizes: np.ndarray, k: int) -> np.ndarray:
    """Split k over cells in proportion to ``sizes`` (largest remainder), never above a cell's size."""
    sizes = np.asarray(sizes, dtype=np.int64)
    total = int(sizes.sum())
    if k > total:
        raise SelectionError(f"cannot take {k} items from cells holding {total}; lower curate.k")
    if total == 0:
        return np.zeros_like(sizes)
    exact = sizes * (k / total)
    quota = np.minimum(np.floor(exact).astype(np.int64), sizes)
    remainder = exact - quota
    short = k - int(quota.sum())
    # most-deserving cells first: larger fractional remainder, then larger size, then lower index
    for cell in np.lexsort((np.arange(len(sizes)), -sizes, -remainder)):
        if short == 0:
            break
        if quota[cell] < sizes[cell]:
            quota[cell] += 1
            short -= 1
    return quota


def balance(sizes: np.ndarray, k: int) -> np.ndarray:
    """Split k as evenly as possible over cells, never above a cell's size (water filling)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if k > int(sizes.sum()):
        raise SelectionError(f"cannot take {k} items from cells holding {int(sizes.sum())}; lower curate.k")
    quota = np.zeros_like(sizes)
    remaining = k
    order = np.lexsort((np.arange(len(sizes)), sizes))  # smallest cells settle first
    for pos, cell in enumerate(order):
        share = remaining // (len(sizes) - pos)
        quota[cell] = min(sizes[cell], share)
        remaining -= quota[cell]
    # integer division leaves at most len(sizes)-1 items; the largest cells absorb them
    for cell in order[::-1]:
        if remaining == 0:
            break
        extra = min(remaining, sizes[cell] - quota[cell])
        quota[cell] += extra
        remaining -= extra
    return quota


@register("kmeans-stratified", StratifiedParams)
def kmeans_stratified(X: np.ndarray, k: int, *, seed: int, domains=None, options: StratifiedParams) -> np.ndarray:
    """Uniform picks inside k-means clusters, each cluster's count proportional to its size.

    With ``options.per_domain_balance`` the budget is first split evenly over domains, then
    proportionally over clusters inside each domain.
    """
    rng = np.random.default_rng(seed)
    n_strata = min(options.n_strata, len(X))
    _, labels = fit_kmeans(X, n_strata, seed=seed, batch_size=options.kmeans_batch_size, backend=options.kmeans_backend)
    if options.per_domain_balance and domains is not None:
        names, domain_of = np.unique(np.asarray(domains), return_inverse=True)
        domain_quota = balance(np.bincount(domain_of, minlength=len(names)), k)
        groups = [(np.flatnonzero(domain_of == d), int(domain_quota[d])) for d in range(len(names))]
    else:
        groups = [(np.arange(len(X)), k)]
    picks = []
    for members, quota in groups:
        cell = labels[members]
        quotas = allocate(np.bincount(cell, minlength=n_strata), quota)
        for c in np.flatnonzero(quotas):
            in_cell = members[cell == c]
            picks.append(rng.choice(in_cell, size=int(quotas[c]), replace=False))
    picks = np.concatenate(picks) if picks else np.empty(0, dtype=np.int64)
    # a seeded shuffle as rank: a prefix of a stratified sample is close to stratified
    return rng.permutation(picks)


@register("kcenter")
def kcenter(X: np.ndarray, k: int, *, seed: int, domains=None, options: StrategyParams) -> np.ndarray:
    """Farthest-first traversal (Gonzalez) from a seeded random start: a 2-approximation of the
    minimum covering radius in Euclidean distance (monotone in cosine distance for unit rows)."""
    n = len(X)
    first = int(np.random.default_rng(seed).integers(n))
    picks = [first]
    nearest = 1.0 - X @ X[first]  # cosine distance to the nearest pick
    nearest[first] = -np.inf
    for _ in range(k - 1):
        j = int(np.argmax(nearest))
        picks.append(j)
        np.minimum(nearest, 1.0 - X @ X[j], out=nearest)
        nearest[j] = -np.inf
    return np.asarray(picks, dtype=np.int64)


@register("facility-location", FacilityParams)
def facility(X: np.ndarray, k: int, *, seed: int, domains=None, options: FacilityParams) -> np.ndarray:
    """Greedy facility location on clipped cosine similarity (see curation.facility)."""
    return facility_location(
        X,
        k,
        seed=seed,
        n_neighbors=options.facility_neighbors,
        dense_limit=options.facility_dense_limit,
        exact_knn_limit=options.facility_exact_knn_limit,
        partition_size=options.facility_partition_size,
        candidates_per_partition=options.facility_candidates_per_partition,
        kmeans_batch_size=options.kmeans_batch_size,
        kmeans_backend=options.kmeans_backend,
    )


@register("few-clusters", FewClustersParams)
def few_clusters(X: np.ndarray, k: int, *, seed: int, domains=None, options: FewClustersParams) -> np.ndarray:
    """A deliberately narrow subset, the low-diversity control of data-diversity experiments.

    The rows are split into ``options.n_strata`` k-means clusters; whole clusters are taken in a
    seeded random order until k rows are reached, the last cluster's rows nearest its centroid
    first. The picks thus come from the fewest clusters that hold k rows in that order.
    """
    n_strata = min(options.n_strata, len(X))
    centers, labels = fit_kmeans(X, n_strata, seed=seed, batch_size=options.kmeans_batch_size, backend=options.kmeans_backend)
    picks: list[np.ndarray] = []
    left = k
    for cluster in np.random.default_rng(seed).permutation(n_strata):
        members = np.flatnonzero(labels == cluster)
        if len(members) == 0:
            continue
        # nearest to the centroid first (stable on ties), so a partly taken cluster keeps its core
        members = members[np.argsort(-(X[members] @ centers[cluster]), kind="stable")]
        picks.append(members[:left])
        left -= len(picks[-1])
        if left == 0:
            break
    return np.concatenate(picks)


@register("kmeans-learnable", KMeansParams, needs_pass_rates=True)
def kmeans_learnable(X: np.ndarray, k: int, *, seed: int, domains=None, options: KMeansParams,
                     pass_rates: np.ndarray) -> np.ndarray:
    """Diversity and learnability together: k k-means clusters, and from each the prompt of largest p(1-p).

    p is the base model's pass rate on the prompt (the probe); p(1-p) is the variance of a GRPO group's
    rewards, so the pick of each cluster is its prompt with the most gradient, the one nearest the centroid
    among equals. Larger clusters come first; clusters k-means leaves empty are made up by the most learnable
    prompts not yet picked.
    """
    centers, labels = fit_kmeans(X, k, seed=seed, batch_size=options.kmeans_batch_size, backend=options.kmeans_backend)
    learnability = pass_rates * (1.0 - pass_rates)
    closeness = np.einsum("ij,ij->i", X, centers[labels])
    picks: list[int] = []
    sizes = np.bincount(labels, minlength=len(centers))
    for cluster in np.lexsort((np.arange(len(centers)), -sizes)):
        members = np.flatnonzero(labels == cluster)
        if len(members):
            # most learnable first, then nearest the centroid, then row order
            picks.append(int(members[np.lexsort((members, -closeness[members], -learnability[members]))[0]]))
    if len(picks) < k:
        rest = np.setdiff1d(np.arange(len(X)), picks)
        picks += rest[np.lexsort((rest, -learnability[rest]))][: k - len(picks)].tolist()
    return np.asarray(picks[:k], dtype=np.int64)
