"""Configuration of the curate stage's selection: strategy, budget, dedup, embedding."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

class StrategyOptions(BaseModel):
    """Knobs of the selection strategies; each strategy reads only the ones it uses."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    n_strata: int = Field(64, ge=1)
    """kmeans-stratified: number of k-means clusters the budget is spread over in proportion to their sizes;
    few-clusters: number of clusters the rows are split into before whole clusters are taken."""

    per_domain_balance: bool = False
    """kmeans-stratified: split the budget evenly across domains first (capped by each domain's size),
    then proportionally over clusters inside each domain."""

    kmeans_batch_size: int = Field(4096, ge=64)
    """Mini-batch size of scikit-learn's MiniBatchKMeans (larger is steadier, smaller is faster per step)."""

    kmeans_backend: Literal["auto", "sklearn", "faiss"] = "auto"
    """k-means implementation: faiss (2-4x faster than scikit-learn at a million points on 2 cores),
    scikit-learn, or
    auto = faiss when it is installed, else scikit-learn."""

    facility_neighbors: int = Field(32, ge=1)
    """facility-location: neighbours kept per point in the sparse similarity graph used above
    ``facility_dense_limit`` points."""

    facility_dense_limit: int = Field(4096, ge=1)
    """facility-location: up to this many points the exact n x n similarity matrix is used."""

    facility_partition_size: int = Field(4096, ge=64)
    """facility-location: above ``facility_exact_knn_limit`` points, points are split into k-means
    partitions of about this many points, and linked only to candidates of their own partition."""

    facility_candidates_per_partition: int = Field(128, ge=1)
    """facility-location: above ``facility_exact_knn_limit`` points, the seeded sample of each
    partition's members that may be picked (raised so that at least 4k candidates exist)."""

    facility_exact_knn_limit: int = Field(20_000, ge=1)
    """facility-location: up to this many points the kNN graph is exact (blocked brute force)."""


class CurateConfig(BaseModel):
    """What the curate stage selects and how.

    When the deduplicated set is smaller than ``k``, ``on_small_input`` decides: ``"error"`` raises a
    SelectionError naming k and n; ``"clip"`` selects all n distinct problems and logs a warning.
    """

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    strategy: str = "kmeans-centroid"
    """Selection strategy, a name of curation/selection.py's registry: kmeans-centroid, kmeans-stratified,
    kcenter, facility-location, random, full, or few-clusters (a low-diversity control: whole k-means clusters
    in seeded random order)."""

    @field_validator("strategy")
    @classmethod
    def _registered(cls, name: str) -> str:
        from .selection import STRATEGIES  # the registry imports this module for StrategyOptions

        return STRATEGIES.check(name)

    k: int = Field(600, ge=1)
    """Number of problems to select (ignored by ``full``, which keeps every distinct problem)."""

    seed: int = 0
    """Seed of every random choice of the chosen strategy (k-means init, k-center start, sampling)."""

    random_seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=3)
    """Seeds of the random subsets of the same size reported beside the chosen strategy (at least 3)."""

    n_clusters: int = Field(50, ge=2)
    """Clusters of the k-means on all points behind the ``cluster_entropy``/``clusters_hit`` metrics
    and the selection table's ``cluster`` column (clipped to the number of distinct problems)."""

    dedup_threshold: float = Field(0.95, gt=0.0, le=1.0)
    """Problems whose embedding has cosine similarity above this with an earlier problem are dropped
    as near-duplicates; 1.0 keeps every problem whose normalized text is distinct."""

    embedding_model: Path | None = None
    """Directory of a sentence-transformers model; None uses the packaged all-MiniLM-L6-v2."""

    batch_size: int = Field(64, ge=1)
    """Texts per forward pass of the embedding model."""

    device: str | None = None
    """Torch device of the embedding model; None picks CUDA when present, else CPU."""

    per_domain_balance: bool = False
    """kmeans-stratified only: spread the budget evenly over domains before spreading it over clusters."""

    n_strata: int = Field(64, ge=1)
    """kmeans-stratified: number of clusters the budget is spread over; few-clusters: number of clusters the
    rows are split into before whole clusters are taken."""

    facility_neighbors: int = Field(32, ge=1)
    """facility-location only: neighbours per point in the sparse similarity graph for large inputs."""

    kmeans_backend: Literal["auto", "sklearn", "faiss"] = "auto"
    """k-means implementation for strategies and metrics: faiss, sklearn, or auto (faiss when installed).
    Picks are deterministic per backend, not across backends."""

    on_small_input: Literal["error", "clip"] = "error"
    """If k exceeds the number of distinct problems: "error" raises, "clip" selects them all with a warning."""

    encoder: Literal["minilm", "policy"] = "minilm"
    """What embeds the prompts: ``minilm`` (the sentence-transformers model of ``embedding_model``) or
    ``policy``: the pipeline's base model, each prompt as the policy sees it (its chat template or plain
    layout), its last hidden state mean-pooled over the prompt's tokens (the paper clusters the policy's own
    representations). Cached on disk like the MiniLM vectors, keyed by the model's fingerprint; the curate
    stage then depends on the model stage."""

    probe_k: int | None = Field(None, ge=2)
    """Learnability probe: the base model samples this many completions per candidate prompt (at temperature
    1), scored by the domain's verifier, giving each prompt its pass rate p (``curation_probe``). None: no
    probe. Needs at least 2 samples for p(1-p) to mean anything."""

    probe_max: int = Field(2000, ge=1)
    """Most candidates the probe samples (a seeded random pre-sample of the deduplicated set when it is larger);
    selection then runs on the probed candidates only, so the cost stays in bounds."""

    drop_zero_variance: bool = False
    """With the probe: drop prompts the base model always or never solves (p = 0 or 1) before selecting: their
    GRPO groups have no reward variance, hence no gradient."""

    @model_validator(mode="after")
    def _distinct_random_seeds(self) -> CurateConfig:
        if len(set(self.random_seeds)) != len(self.random_seeds):
            raise ValueError(f"random_seeds {self.random_seeds} repeats a seed; list distinct seeds, e.g. [0, 1, 2]")
        return self

    @model_validator(mode="after")
    def _learnable_needs_the_probe(self) -> CurateConfig:
        if self.strategy == "kmeans-learnable" and self.probe_k is None:
            raise ValueError("strategy kmeans-learnable ranks prompts by the probe's pass rates: set curate.probe_k "
                             "(e.g. 4), or choose another strategy")
        if self.drop_zero_variance and self.probe_k is None:
            raise ValueError("drop_zero_variance needs the probe's pass rates: set curate.probe_k (e.g. 4)")
        return self

    def strategy_options(self) -> StrategyOptions:
        """The strategy knobs of this config."""
        return StrategyOptions(
            n_strata=self.n_strata,
            per_domain_balance=self.per_domain_balance,
            facility_neighbors=self.facility_neighbors,
            kmeans_backend=self.kmeans_backend,
        )
