"""Read, validate and write peft LoRA adapter folders (safetensors only).

An expert is a folder written by peft's ``save_pretrained``: ``adapter_config.json``
and ``adapter_model.safetensors`` with keys ``<module>.lora_A.weight`` (r x k) and
``<module>.lora_B.weight`` (d x r). Merged adapters are written in the same form,
so ``PeftModel.from_pretrained`` and vLLM's ``LoRARequest`` load them unchanged.

Scaling convention of written adapters: every module's scaling is folded into its
B factor and the config says ``lora_alpha == r`` (scaling 1, no rsLoRA, no rank or
alpha patterns). Modules of lower rank are zero-padded to the common rank, which
leaves their update unchanged and keeps one ``r`` for the whole adapter (vLLM
reads a single rank per adapter).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from merging.lowrank import LoraFactors, pad_rank
from polymath.errors import MergeError

if TYPE_CHECKING:
    from peft import LoraConfig

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_A_SUFFIX = ".lora_A.weight"
_B_SUFFIX = ".lora_B.weight"
# Saved keys are prefixed by the PeftModel wrapper; peft's rank/alpha patterns
# match the module names of the bare model.
_WRAPPER_PREFIX = "base_model.model."

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class LoraAdapter:
    """One LoRA expert as read from its folder; factors in float32."""

    path: Path
    config: LoraConfig
    modules: dict[str, LoraFactors]
    """Factors per module, keyed by the saved module path (``base_model.model.<module>``)."""
    dtype: torch.dtype
    """Dtype the factors were stored in."""

    @property
    def base_model(self) -> str | None:
        return self.config.base_model_name_or_path

    @property
    def name(self) -> str:
        return self.path.name


def _module_scaling(config: LoraConfig, module: str, rank: int, where: str) -> float:
    from peft.utils.other import get_pattern_key

    bare = module.removeprefix(_WRAPPER_PREFIX)
    rank_pattern, alpha_pattern = config.rank_pattern or {}, config.alpha_pattern or {}
    r = rank_pattern.get(get_pattern_key(rank_pattern.keys(), bare), config.r)
    alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), bare), config.lora_alpha)
    if r != rank:
        raise MergeError(
            f"{where}: module {module} has factors of rank {rank} but the config says r={r}; "
            "the folder is inconsistent, save the adapter again with save_pretrained"
        )
    return alpha / math.sqrt(r) if config.use_rslora else alpha / r


def _read_config(path: Path) -> LoraConfig:
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        raise MergeError(f"{path}: no {CONFIG_NAME}; pass the folder written by save_pretrained of a peft LoRA adapter")
    try:
        peft_type = json.loads(config_file.read_text()).get("peft_type")
    except json.JSONDecodeError as exc:
        raise MergeError(f"{config_file}: not valid JSON ({exc}); save the adapter again with save_pretrained") from exc
    if peft_type != "LORA":
        raise MergeError(
            f"{config_file}: peft_type is {peft_type!r}; only LoRA adapters (peft_type LORA) can be merged"
        )
    # peft imports transformers (seconds): load it only when an adapter is read.
    from peft import PeftConfig

    try:
        config = PeftConfig.from_pretrained(str(path))
    except (TypeError, ValueError) as exc:
        raise MergeError(
            f"{config_file}: not a valid LoRA config ({exc}); save the adapter again with save_pretrained"
        ) from exc
    unsupported = {
        "use_dora": bool(getattr(config, "use_dora", False)),
        "lora_bias": bool(getattr(config, "lora_bias", False)),
        "modules_to_save": bool(getattr(config, "modules_to_save", None)),
        "target_parameters": bool(getattr(config, "target_parameters", None)),
        "trainable_token_indices": bool(getattr(config, "trainable_token_indices", None)),
    }
    for field, used in unsupported.items():
        if used:
            raise MergeError(
                f"{config_file}: {field} is set; polymath merges plain LoRA on linear modules only, "
                f"so retrain this expert without {field}"
            )
    return config


def read_adapter(path: Path | str) -> LoraAdapter:
    """Load one peft LoRA folder; MergeError naming the folder (and module) when unusable."""
    path = Path(path)
    if not path.is_dir():
        raise MergeError(f"{path}: not a folder; pass the folder that holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    config = _read_config(path)
    weights_file = path / WEIGHTS_NAME
    if not weights_file.is_file():
        hint = " (found adapter_model.bin: load it with peft and save_pretrained again to get safetensors)"
        raise MergeError(
            f"{path}: no {WEIGHTS_NAME}; polymath reads safetensors only"
            + (hint if (path / "adapter_model.bin").exists() else "")
        )
    try:
        tensors = load_file(str(weights_file))
    except (SafetensorError, OSError) as exc:
        raise MergeError(f"{weights_file}: unreadable safetensors file ({exc}); save the adapter again") from exc

    a_parts: dict[str, torch.Tensor] = {}
    b_parts: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        if key.endswith(_A_SUFFIX):
            a_parts[key[: -len(_A_SUFFIX)]] = tensor
        elif key.endswith(_B_SUFFIX):
            b_parts[key[: -len(_B_SUFFIX)]] = tensor
        else:
            raise MergeError(
                f"{weights_file}: tensor {key} is not a LoRA linear factor (DoRA magnitudes, biases, "
                "embedding LoRA and modules_to_save cannot be merged); retrain the expert with plain LoRA"
            )
    if not a_parts:
        raise MergeError(f"{weights_file}: no LoRA factors (*.lora_A.weight) found; is this a LoRA adapter?")
    for module in sorted(a_parts.keys() ^ b_parts.keys()):
        missing = "lora_B" if module in a_parts else "lora_A"
        raise MergeError(f"{path}: module {module} has no {missing} factor; the adapter file is incomplete")

    modules: dict[str, LoraFactors] = {}
    dtype = next(iter(tensors.values())).dtype
    for module in sorted(a_parts):
        a, b = a_parts[module], b_parts[module]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise MergeError(
                f"{path}: module {module} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}, "
                "which do not form a LoRA update (need A (r, k) and B (d, r))"
            )
        scaling = _module_scaling(config, module, a.shape[0], str(path))
        modules[module] = LoraFactors(a.float(), b.float(), scaling)
    return LoraAdapter(path=path, config=config, modules=modules, dtype=dtype)


def _same_base(x: str | None, y: str | None) -> bool:
    if x == y:
        return True
    if x is None or y is None:
        return False
    px, py = Path(x), Path(y)
    return px.exists() and py.exists() and px.resolve() == py.resolve()


def validate_experts(experts: Sequence[LoraAdapter], *, equal_ranks: bool) -> None:
    """Check that the experts can be merged: same base model, modules and shapes.

    ``equal_ranks`` additionally requires the same rank per module (RobustMerge
    normalizes row scales across experts row by row).
    """
    if len(experts) < 2:
        raise MergeError(f"merging needs at least two adapters, got {len(experts)}")
    first = experts[0]
    for expert in experts[1:]:
        if not _same_base(first.base_model, expert.base_model):
            raise MergeError(
                f"{expert.path}: base_model_name_or_path is {expert.base_model!r} but {first.path} has "
                f"{first.base_model!r}; merge only experts trained on the same base model"
            )
        missing = sorted(first.modules.keys() - expert.modules.keys())
        extra = sorted(expert.modules.keys() - first.modules.keys())
        if missing or extra:
            module, what = (missing[0], "lacks") if missing else (extra[0], "adds")
            raise MergeError(
                f"{expert.path}: {what} module {module} compared with {first.path} "
                f"({len(missing)} missing, {len(extra)} extra); train all experts with the same target_modules"
            )
        for module, ref in first.modules.items():
            got = expert.modules[module]
            if got.shape != ref.shape:
                raise MergeError(
                    f"{expert.path}: module {module} updates a {got.shape[0]}x{got.shape[1]} weight but "
                    f"{first.path} updates {ref.shape[0]}x{ref.shape[1]}; the experts do not share one base model"
                )
            if equal_ranks and got.rank != ref.rank:
                raise MergeError(
                    f"{expert.path}: module {module} has rank {got.rank} but {first.path} has rank {ref.rank}; "
                    "RobustMerge needs equal ranks (use task-arithmetic, ties or dare for mixed ranks)"
                )


def resolve_save_dtype(name: str, experts: Sequence[LoraAdapter]) -> torch.dtype:
    """``auto`` = the first expert's stored dtype, else the named dtype."""
    return experts[0].dtype if name == "auto" else _DTYPES[name]


def write_adapter(
    folder: Path, modules: Mapping[str, LoraFactors], template: LoraConfig, dtype: torch.dtype
) -> LoraConfig:
    """Write ``modules`` as a peft LoRA folder (see the module docstring for the scaling convention)."""
    rank = max(f.rank for f in modules.values())
    tensors: dict[str, torch.Tensor] = {}
    for module, factors in modules.items():
        padded = pad_rank(factors.to(device="cpu"), rank)
        tensors[module + _A_SUFFIX] = padded.a.to(dtype).contiguous()
        tensors[module + _B_SUFFIX] = padded.b.to(dtype).contiguous()
    config = replace(
        template,
        r=rank,
        lora_alpha=rank,
        use_rslora=False,
        rank_pattern={},
        alpha_pattern={},
        inference_mode=True,
    )
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    config.save_pretrained(str(folder))
    return config


@contextmanager
def atomic_folder(out_dir: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder that replaces ``out_dir`` only when the block succeeds."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise MergeError(
            f"{out_dir} already exists and is not empty; choose a new output folder or pass overwrite=True"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            # rename() cannot replace a non-empty folder: move the old one aside first.
            old = out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex}.old")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
