"""Merge baselines through peft's ``LoraModel.add_weighted_adapter``.

Which ``combination_type`` each baseline uses, and why (peft 0.2x semantics):

task-arithmetic -> ``cat``
    Concatenates [w_n c_n A_n] and [B_n]: exactly sum_n w_n c_n B_n A_n, of rank
    sum_n r_n, with no dense matrix. ``linear`` would instead multiply the weighted
    sum of the A's by that of the B's (cross terms B_n A_m, equal ranks required),
    and ``svd`` forms dense deltas only to truncate them. A ``rank`` below the summed
    rank is then reached with our factored truncated SVD (``lowrank.truncate``).

ties -> ``ties_svd``
    TIES (trim each task vector to its top-``density`` entries by magnitude, elect
    each entry's sign, average the agreeing entries) is defined on the task vectors,
    i.e. on each expert's dense update c_n B_n A_n; ``ties_svd`` does exactly that and
    truncates the full-rank result by SVD. peft's ``ties`` trims and elects signs on the
    A's and the B's separately and multiplies the results, which is not TIES of the
    updates (and carries cross terms).

dare -> ``dare_linear_svd``
    DARE (drop entries of each task vector with probability 1 - ``density``, rescale the
    survivors by 1 / density, then task arithmetic) likewise acts on the dense updates;
    ``dare_linear`` would drop entries of A and B independently and multiply the sums.

The ``*_svd`` types return a rank ``svd_rank`` adapter: ``MergeConfig.rank``, or the
sum of the experts' ranks (the budget of the exact methods) when it is None.

peft needs the adapters loaded on their base model; the model is read from
``MergeConfig.base_model`` or the experts' ``base_model_name_or_path`` (a local
folder, no download). Only its module shapes matter to the merge.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch

from merging.adapters import LoraAdapter
from merging.lowrank import LoraFactors, truncate
from polymath.errors import MergeError, ModelError

CombinationType = Literal["cat", "ties_svd", "dare_linear_svd"]
MERGED_NAME = "merged"


def resolve_base_model(experts: Sequence[LoraAdapter], base_model: Path | None, method: str) -> Path:
    """The local base model folder the peft baselines load."""
    if base_model is not None:
        path = Path(base_model)
        if not path.is_dir():
            raise ModelError(f"base_model {path} is not a folder; set base_model to the base model's local folder")
        return path
    name = experts[0].base_model
    if not name or not Path(name).is_dir():
        raise ModelError(
            f"{method} loads the base model, but base_model_name_or_path={name!r} in "
            f"{experts[0].path / 'adapter_config.json'} is not a local folder; "
            "set base_model in the merge config to the base model's local folder"
        )
    return Path(name)


def _load_base(path: Path, task_type: str | None, device: str, trust_remote_code: bool = False) -> torch.nn.Module:
    from transformers import AutoModel, AutoModelForCausalLM

    auto = AutoModelForCausalLM if task_type in (None, "CAUSAL_LM") else AutoModel
    try:
        # float32 whatever model.dtype says: the merge computes in float32 (bf16 and fp16 weights widen exactly)
        model = auto.from_pretrained(str(path), dtype=torch.float32, local_files_only=True,
                                     trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load the base model from {path} ({exc}); point base_model to an HF model folder"
        ) from exc
    return model.to(device)


def _load_experts(experts: Sequence[LoraAdapter], base_path: Path, device: str, trust_remote_code: bool = False):
    from peft import PeftModel

    model = _load_base(base_path, experts[0].config.task_type, device, trust_remote_code)
    names = [f"expert_{i}" for i in range(len(experts))]
    for i, (expert, name) in enumerate(zip(experts, names, strict=True)):
        try:
            if i == 0:
                model = PeftModel.from_pretrained(model, str(expert.path), adapter_name=name)
            else:
                model.load_adapter(str(expert.path), adapter_name=name)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise MergeError(
                f"{expert.path}: peft cannot load this adapter on the base model {base_path} ({exc}); "
                "check that the expert was trained on that base model"
            ) from exc
    return model, names


def _collect(model, modules: Sequence[str]) -> dict[str, LoraFactors]:
    from peft.tuners.lora import LoraLayer

    merged: dict[str, LoraFactors] = {}
    for name, layer in model.named_modules():
        if isinstance(layer, LoraLayer) and MERGED_NAME in layer.lora_A:
            a = layer.lora_A[MERGED_NAME].weight.detach().float().cpu()
            b = layer.lora_B[MERGED_NAME].weight.detach().float().cpu()
            # add_weighted_adapter folds every expert's scaling into the merged factors and gives the merged
            # adapter lora_alpha = r, meaning scaling 1; but it copies use_rslora from the first expert, so
            # on rsLoRA experts layer.scaling says alpha / sqrt(r) = sqrt(r). The factors are the truth.
            merged[name] = LoraFactors(a, b, 1.0)
    if set(merged) != set(modules):
        unknown = sorted(set(modules) ^ set(merged))
        raise MergeError(
            f"peft merged modules do not match the adapters' modules (first difference: {unknown[0]}); "
            "the adapters' saved key names do not follow peft's layout"
        )
    return {m: merged[m] for m in modules}


def peft_merge(
    experts: Sequence[LoraAdapter],
    combination_type: CombinationType,
    *,
    weights: Sequence[float],
    rank: int | None,
    density: float | None = None,
    majority_sign_method: Literal["total", "frequency"] = "total",
    base_model: Path | None = None,
    trust_remote_code: bool = False,
    seed: int = 0,
    device: str = "cpu",
    method: str = "",
) -> dict[str, tuple[LoraFactors, float | None]]:
    """Merge with ``add_weighted_adapter``; returns per module (factors with scaling 1, truncation error)."""
    base_path = resolve_base_model(experts, base_model, method or combination_type)
    model, names = _load_experts(experts, base_path, device, trust_remote_code)
    summed_rank = sum(max(f.rank for f in e.modules.values()) for e in experts)
    kwargs: dict = {}
    if combination_type != "cat":
        kwargs = {
            "svd_rank": rank or summed_rank,
            "density": density,
            "majority_sign_method": majority_sign_method,
            # Reduced SVD: the full d x d and k x k bases are never used after truncation.
            "svd_full_matrices": False,
        }
    # DARE draws its masks from torch's global generator: seed it without
    # disturbing the caller's random state.
    with torch.random.fork_rng(devices=[] if device == "cpu" else [torch.device(device).index or 0]):
        torch.manual_seed(seed)
        model.add_weighted_adapter(
            adapters=names,
            weights=list(weights),
            adapter_name=MERGED_NAME,
            combination_type=combination_type,
            **kwargs,
        )
    merged = _collect(model, list(experts[0].modules))
    out: dict[str, tuple[LoraFactors, float | None]] = {}
    for module, factors in merged.items():
        if combination_type == "cat" and rank is not None and rank < factors.rank:
            out[module] = truncate(factors, rank)
        else:
            out[module] = (factors, None)
    return out
