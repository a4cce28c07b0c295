"""The curate stage as one call: dedup, embed (cached), select, and measure diversity against random."""

from __future__ import annotations

import logging
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from polymath.errors import DataError, SelectionError

from .clustering import fit_kmeans
from .config import CurateConfig
from .dedup import DedupStats, exact_keep_mask, near_keep_mask
from .diversity import metrics_frame
from .embedding import EmbedStats, SentenceTransformerEncoder, TextEncoder, embed_texts
from polymath.records import Problem
from .selection import select, validate_embeddings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CurationResult:
    """Everything one curation produced.

    ``selection`` has one row per selected problem: problem_id, domain, cluster (label in the
    metrics k-means over all distinct problems) and rank (0 = the strategy's first pick).
    ``metrics`` is long format (strategy, seed, metric, value): the chosen strategy's rows and one
    block per random seed. ``embeddings`` and ``kept_ids`` cover the distinct problems left after
    dedup; ``selected_index`` indexes them (e.g. for ``plot_projection``).
    """

    selected_ids: list[str]
    selection: pd.DataFrame
    metrics: pd.DataFrame
    dedup: DedupStats
    embed: EmbedStats
    dedup_seconds: float
    selection_seconds: float
    metrics_seconds: float
    k: int
    kept_ids: list[str]
    embeddings: np.ndarray
    selected_index: np.ndarray


def curate(
    problems: list[Problem],
    config: CurateConfig,
    cache_dir: Path | None,
    *,
    encoder: TextEncoder | None = None,
    pass_rates: dict[str, float] | None = None,
) -> CurationResult:
    """Select ``config.k`` diverse problems out of ``problems``.

    ``cache_dir`` holds the embedding cache (None: no cache); ``encoder`` replaces the
    sentence-transformers model named by the config (e.g. an already loaded one, or the policy's
    :class:`curation.policy_encoder.PolicyEncoder`). ``pass_rates`` (problem id -> the base model's probe
    pass rate) feed the learnability strategies, ``drop_zero_variance`` and the learnability metrics.
    """
    if not problems:
        raise SelectionError("no problems to curate: the input set is empty; check the data source and its filters")
    repeated = [pid for pid, count in Counter(p.id for p in problems).items() if count > 1]
    if repeated:
        raise DataError(
            f"{len(repeated)} problem ids occur more than once (first: {repeated[0]!r}); ids must be unique: "
            "map a unique column to `id` in the data config, or leave it unmapped to number the rows"
        )

    start = time.perf_counter()
    exact_keep = exact_keep_mask([p.prompt for p in problems])
    dedup_seconds = time.perf_counter() - start
    candidates = [p for p, keep in zip(problems, exact_keep, strict=True) if keep]
    encoder = encoder if encoder is not None else SentenceTransformerEncoder(config.embedding_model, config.device)
    X, embed_stats = embed_texts([p.prompt for p in candidates], encoder, cache_dir, config.batch_size)
    validate_embeddings(X, [p.id for p in candidates])
    if config.encoder == "policy":
        X = _centered(X)

    start = time.perf_counter()
    near_keep = near_keep_mask(X, config.dedup_threshold, seed=config.seed, kmeans_backend=config.kmeans_backend)
    dedup_seconds += time.perf_counter() - start
    if pass_rates is not None and config.drop_zero_variance:
        # prompts always or never solved give GRPO groups without reward variance: no gradient
        near_keep &= np.asarray([0.0 < pass_rates[p.id] < 1.0 for p in candidates], dtype=bool)
    kept = [p for p, keep in zip(candidates, near_keep, strict=True) if keep]
    X = np.ascontiguousarray(X[near_keep])
    dedup = DedupStats(
        n_input=len(problems),
        exact_duplicates=int((~exact_keep).sum()),
        near_duplicates=int((~near_keep).sum()),
        n_kept=len(kept),
    )
    log.info(
        "dedup: %d problems, %d exact and %d near duplicates dropped, %d kept (%.2fs)",
        dedup.n_input,
        dedup.exact_duplicates,
        dedup.near_duplicates,
        dedup.n_kept,
        dedup_seconds,
    )
    k = _effective_k(config, dedup)

    domains = np.asarray([p.domain for p in kept], dtype=object)
    start = time.perf_counter()
    rates = np.asarray([pass_rates[p.id] for p in kept]) if pass_rates is not None else None
    picks = select(config.strategy, X, k, seed=config.seed, domains=domains, options=config.strategy_options(),
                   pass_rates=rates)
    selection_seconds = time.perf_counter() - start

    start = time.perf_counter()
    n_clusters = min(config.n_clusters, len(X))
    _, labels = fit_kmeans(X, n_clusters, seed=config.seed, backend=config.kmeans_backend)
    runs = [(config.strategy, config.seed, picks)]
    for seed in config.random_seeds:
        if config.strategy == "random" and seed == config.seed:
            continue  # already the chosen run
        runs.append(("random", seed, select("random", X, len(picks), seed=seed)))
    metrics = metrics_frame(X, runs, labels, n_clusters, domains)
    if rates is not None:
        metrics = pd.concat([metrics, learnability_frame(rates, runs)], ignore_index=True)
    metrics_seconds = time.perf_counter() - start

    selected_ids = [kept[i].id for i in picks]
    table = pd.DataFrame(
        {
            "problem_id": selected_ids,
            "domain": [kept[i].domain for i in picks],
            "cluster": labels[picks].astype(np.int64),
            "rank": np.arange(len(picks), dtype=np.int64),
        }
    )
    log.info(
        "selected %d of %d with %s in %.2fs (metrics %.2fs)",
        len(picks),
        len(kept),
        config.strategy,
        selection_seconds,
        metrics_seconds,
    )
    return CurationResult(
        selected_ids=selected_ids,
        selection=table,
        metrics=metrics,
        dedup=dedup,
        embed=embed_stats,
        dedup_seconds=dedup_seconds,
        selection_seconds=selection_seconds,
        metrics_seconds=metrics_seconds,
        k=len(picks),
        kept_ids=[p.id for p in kept],
        embeddings=X,
        selected_index=picks,
    )


def learnability_frame(pass_rates: np.ndarray, runs: list[tuple[str, int, np.ndarray]]) -> pd.DataFrame:
    """Per selection: the mean p(1-p) of its prompts (GRPO's reward variance) and its share of prompts the
    base model always or never solves (p in {0, 1}: zero-variance groups)."""
    rows = []
    for strategy, seed, picks in runs:
        p = pass_rates[picks]
        rows += [(strategy, int(seed), "learnability", float(np.mean(p * (1 - p)))),
                 (strategy, int(seed), "zero_variance_frac", float(np.mean((p == 0) | (p == 1))))]
    return pd.DataFrame(rows, columns=["strategy", "seed", "metric", "value"])


def _centered(X: np.ndarray) -> np.ndarray:
    """Rows minus their mean, renormalized: a causal LM's pooled states share one large common direction
    (their cosines all sit near 1), which would make every prompt a near-duplicate of every other."""
    centered = X - X.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(centered, axis=1, keepdims=True)
    return np.divide(centered, norms, out=np.zeros_like(centered), where=norms != 0).astype(np.float32)


def _effective_k(config: CurateConfig, dedup: DedupStats) -> int:
    """k to select, after ``on_small_input`` has handled a set smaller than k."""
    n = dedup.n_kept
    if config.strategy == "full":
        return n
    if config.k <= n:
        return config.k
    if n == 1 and dedup.n_input > 1:
        what = (
            f"all {dedup.n_input} problems are duplicates of one another ({dedup.exact_duplicates} exact, "
            f"{dedup.near_duplicates} near at cosine > {config.dedup_threshold})"
        )
        fix = "supply distinct problems or raise curate.dedup_threshold (1.0 keeps all distinct texts)"
    else:
        what = (
            f"curate.k={config.k} exceeds the n={n} distinct problems left after dedup "
            f"({dedup.n_input} in, {dedup.exact_duplicates} exact and {dedup.near_duplicates} near duplicates)"
        )
        fix = f"lower curate.k to at most {n}, add problems, or raise curate.dedup_threshold"
    if config.on_small_input == "error":
        raise SelectionError(f"{what}; {fix}, or set curate.on_small_input: clip to select all {n}")
    warnings.warn(f"{what}; on_small_input=clip: selecting all {n}", UserWarning, stacklevel=3)
    log.warning("%s; on_small_input=clip: selecting all %d", what, n)
    return n
