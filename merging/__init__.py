"""Merging LoRA experts: RobustMerge (paper and official-code forms), KnOTS, Core Space and peft baselines.

Usable without any orchestrator::

    from merging import MergeConfig, merge_adapters
    report = merge_adapters([Path("experts/math"), Path("experts/logic")], Path("merged"),
                            MergeConfig(method="robustmerge"))
"""

import importlib

# Names resolve on first use, so that reading a merge config (the CLI, the planner) does not import torch.
_HOME = {
    "merging.adapters": ("LoraAdapter", "read_adapter", "validate_experts", "write_adapter"),
    "merging.config": ("MergeConfig",),
    "merging.core_space": ("core_space",),
    "merging.lowrank": ("LoraFactors", "concat", "cosine", "frobenius_norm", "inner", "truncate"),
    "merging.merge": ("merge_adapters",),
    "merging.methods": ("MergeMethod", "get_method", "method_names"),
    "merging.report": ("MergeReport", "ModuleStats"),
    "merging.robustmerge": ("prune_by_magnitude", "robustmerge", "robustmerge_reference", "row_scales"),
}
_MODULE_OF = {name: module for module, names in _HOME.items() for name in names}


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'merging' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)


__all__ = [
    "LoraAdapter",
    "LoraFactors",
    "MergeConfig",
    "MergeMethod",
    "MergeReport",
    "ModuleStats",
    "concat",
    "core_space",
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
