"""Configuration of one merge run."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from polymath.keys import NOT_IN_KEY

#: Density a baseline uses when ``MergeConfig.density`` is None. TIES keeps the
#: top 20% of each task vector (the TIES paper's k); DARE drops half of the
#: entries, a rate at which the DARE paper found rescaled LoRA/SFT deltas intact.
#: KnOTS keeps everything, as the official LLM configuration does (sign election and disjoint mean only).
DEFAULT_DENSITY: dict[str, float] = {"ties": 0.2, "dare": 0.5, "knots": 1.0}


class MergeConfig(BaseModel):
    """How to merge N LoRA experts into one adapter.

    A method reads only the fields it uses; the others are ignored, so one config
    block can be reused across methods, and ``MergeReport.parameters`` records
    exactly the values the method ran with.
    """

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    method: str = "robustmerge"
    """Merge method, a name of merging/methods.py's registry: ``robustmerge`` (paper form, exact rank N*r sum),
    ``robustmerge-reference`` (the official code's product of sums),
    ``task-arithmetic``, ``ties``, ``dare``, ``knots`` (KnOTS: TIES or DARE on the experts' updates
    aligned in one shared SVD basis, in the factor space), ``core-space`` (the experts' cores in the shared
    bases of their stacked factors, merged by ``core_merge``) or ``core-space-iso-cts`` (Core Space with
    Iso-CTS inside)."""

    @field_validator("method")
    @classmethod
    def _registered(cls, name: str) -> str:
        from merging.methods import METHODS  # the registry imports this module for MergeConfig

        return METHODS.check(name)

    keep: float = Field(default=0.2, gt=0.0, le=1.0)
    """RobustMerge: fraction of each LoRA factor's entries kept by magnitude pruning
    (0.2 in the paper's code)."""

    lam: float = 2.0
    """RobustMerge: global scale lambda of the merged update (2.0 in the paper and code;
    the reference form applies it to both factors, as the official code does)."""

    normalize: bool = True
    """RobustMerge (paper form): divide each expert's row scales by their sum across
    experts (the paper's cross-task normalization; False gives the prune-and-scale
    ablation)."""

    clamp_ratio: float = Field(default=0.2, ge=0.0, le=1.0)
    """RobustMerge reference form: each expert's row scales are clamped from below at
    its own sorted scale of index floor(r * (1 - clamp_ratio)), as the official code does
    (1.0 turns the clamp off)."""

    rank: int | None = Field(default=None, ge=1)
    """Rank of the merged adapter. None: exact (robustmerge, task arithmetic: the sum of
    the experts' ranks; reference form: the experts' rank; TIES/DARE, whose merged delta
    is full rank: truncated to the sum of the experts' ranks). A rank below the exact
    rank compresses by truncated SVD."""

    seed: int = 0
    """Seed of the random drop masks (DARE)."""

    density: float | None = Field(default=None, gt=0.0, le=1.0)
    """TIES/DARE/KnOTS: fraction of each task vector's entries kept (KnOTS-DARE: the keep probability).
    None: 0.2 for TIES, 0.5 for DARE, 1.0 for KnOTS (no trim, the official LLM configuration)."""

    weights: list[float] | None = None
    """Baselines: one weight per expert, in the order of the adapter folders.
    None: 1.0 each (a plain sum for task arithmetic and DARE, a mean over agreeing
    signs for TIES)."""

    scale: float = 1.0
    """KnOTS, Core Space and RobustMerge's reference form (on B* only): global scale of the merged update, 1
    by default (the baselines scale through ``weights``, RobustMerge's paper form through ``lam``)."""

    core_merge: Literal["tsv-m", "iso-cts", "iso-c", "task-arithmetic"] = "tsv-m"
    """Core Space (``core-space``): how the experts' cores are merged: TSV-M (each task's top singular
    directions, orthogonalized), Iso-CTS or Iso-C (isotropic spectra), or their plain sum."""

    common_fraction: float = Field(default=0.8, gt=0.0, lt=1.0)
    """Core Space with Iso-CTS: share of the core's directions given to the common subspace (the top
    directions of the experts' sum); the rest is split evenly between the experts (0.8 in the Iso-CTS code)."""

    knots_merge: Literal["ties", "dare"] = "ties"
    """KnOTS: how the aligned blocks are merged (the paper's best: TIES); ``dare`` drops entries at random
    (keep probability ``density``), then elects signs and averages as TIES does."""

    knots_trim: Literal["task", "module"] = "task"
    """KnOTS: the scope of the magnitude trim and of the majority sign: each task over every module at once
    (``task``, the official code) or module by module."""

    majority_sign_method: Literal["total", "frequency"] = "total"
    """TIES: elect each entry's sign by the sum of the values (``total``, the TIES paper)
    or by counting signs (``frequency``)."""

    base_model: Path | None = Field(None, json_schema_extra=NOT_IN_KEY)
    """Local folder of the base model, loaded by the peft baselines (TIES, DARE, task
    arithmetic). None: the experts' ``base_model_name_or_path``, which must then be a
    local folder."""

    trust_remote_code: bool = Field(False, json_schema_extra=NOT_IN_KEY)
    """Allow custom modeling code in ``base_model`` (the pipeline sets it from ``model.trust_remote_code``)."""

    device: str = Field("cpu", json_schema_extra=NOT_IN_KEY)
    """Torch device the merge computes on (``cuda`` speeds up the dense SVDs of the
    TIES/DARE baselines); the adapter is always written from CPU."""

    save_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Dtype of the saved factors; ``auto`` keeps the first expert's dtype. The merge
    itself always computes in float32."""

    @model_validator(mode="after")
    def _weights_positive_count(self) -> MergeConfig:
        if self.weights is not None and len(self.weights) == 0:
            raise ValueError("weights must list one value per adapter (or be omitted for 1.0 each)")
        return self

    def resolved_density(self) -> float:
        """The density a TIES/DARE merge uses (``density`` or the method's default)."""
        if self.density is not None:
            return self.density
        return DEFAULT_DENSITY.get(self.method, 1.0)
