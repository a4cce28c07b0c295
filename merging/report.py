"""What a merge run produced: per-module statistics and a row for ``merge_runs``."""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from merging.adapters import LoraAdapter
from merging.lowrank import LoraFactors, frobenius_norm, inner


class ModuleStats(BaseModel):
    """Statistics of one merged module, all computed from the factors."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    module: str
    """Saved module path, e.g. ``base_model.model.model.layers.0.self_attn.q_proj``."""
    rank: int
    """Rank of the merged factors before padding to the adapter's common rank."""
    delta_norm: float
    """Frobenius norm of the merged update."""
    expert_norms: list[float]
    """Frobenius norm of each expert's update (scaling included)."""
    cosines: list[float]
    """Cosine between the merged update and each expert's update."""
    truncation_error: float | None = None
    """Relative Frobenius error of the rank truncation (None: exact or not measured)."""


class MergeReport(BaseModel):
    """Summary of one ``merge_adapters`` run."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    method: str
    """Registry name of the merge method."""
    parameters: dict[str, Any]
    """The hyperparameters the method ran with (defaults resolved)."""
    rank: int
    """Rank ``r`` of the written adapter."""
    seconds: float
    """Wall time to read, validate, merge and measure (writing excluded)."""
    experts: list[str]
    """The expert adapter folders, in merge order."""
    out_dir: str
    """Folder of the merged adapter."""
    modules: list[ModuleStats]
    """Per-module statistics."""

    def expert_mean_cosines(self) -> dict[str, float]:
        """Mean over modules of the cosine to each expert, keyed by the expert folder."""
        return {expert: statistics.fmean(m.cosines[i] for m in self.modules) for i, expert in enumerate(self.experts)}

    def to_row(self) -> dict[str, Any]:
        """One flat row for the ``merge_runs`` table (scalars and JSON strings)."""
        norms = [m.delta_norm for m in self.modules]
        cosines = [c for m in self.modules for c in m.cosines]
        errors = [m.truncation_error for m in self.modules if m.truncation_error is not None]
        return {
            "method": self.method,
            "rank": self.rank,
            "seconds": self.seconds,
            "n_experts": len(self.experts),
            "n_modules": len(self.modules),
            "delta_norm_mean": statistics.fmean(norms),
            "delta_norm_max": max(norms),
            "cosine_mean": statistics.fmean(cosines),
            "cosine_min": min(cosines),
            "truncation_error_mean": statistics.fmean(errors) if errors else None,
            "out_dir": self.out_dir,
            "parameters_json": json.dumps(self.parameters, sort_keys=True, default=str),
            "expert_cosines_json": json.dumps(self.expert_mean_cosines(), sort_keys=True),
        }


def module_stats(
    experts: Sequence[LoraAdapter],
    merged: Mapping[str, LoraFactors],
    truncation_errors: Mapping[str, float | None] | None = None,
) -> list[ModuleStats]:
    """Norms and cosines of every merged module against the experts, in factored form."""
    errors = truncation_errors or {}
    stats = []
    for module, factors in merged.items():
        parts = [e.modules[module] for e in experts]
        norm = frobenius_norm(factors)
        expert_norms = [frobenius_norm(p) for p in parts]
        cosines = [
            inner(factors, p) / (norm * n) if norm > 0 and n > 0 else 0.0
            for p, n in zip(parts, expert_norms, strict=True)
        ]
        stats.append(
            ModuleStats(
                module=module,
                rank=factors.rank,
                delta_norm=norm,
                expert_norms=expert_norms,
                cosines=cosines,
                truncation_error=errors.get(module),
            )
        )
    return stats
