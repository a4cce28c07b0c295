"""Merging LoRA experts: RobustMerge (paper and official-code forms) and peft baselines.

Usable without any orchestrator::

    from merging import MergeConfig, merge_adapters
    report = merge_adapters([Path("experts/math"), Path("experts/logic")], Path("merged"),
                            MergeConfig(method="robustmerge"))
"""

from merging.adapters import LoraAdapter, read_adapter, validate_experts, write_adapter
from merging.config import MergeConfig
from merging.lowrank import LoraFactors, concat, cosine, frobenius_norm, inner, truncate
from merging.merge import merge_adapters
from merging.methods import MergeMethod, get_method, method_names
from merging.report import MergeReport, ModuleStats
from merging.robustmerge import prune_by_magnitude, robustmerge, robustmerge_reference, row_scales

__all__ = [
    "LoraAdapter",
    "LoraFactors",
    "MergeConfig",
    "MergeMethod",
    "MergeReport",
    "ModuleStats",
    "concat",
    "cosine",
    "frobenius_norm",
    "get_method",
    "inner",
    "merge_adapters",
    "method_names",
    "prune_by_magnitude",
    "read_adapter",
    "robustmerge",
    "robustmerge_reference",
    "row_scales",
    "truncate",
    "validate_experts",
    "write_adapter",
]
