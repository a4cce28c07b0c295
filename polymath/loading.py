"""Loading a local Hugging Face causal LM, the same way in every stage.

Everything loads by local path (no hub access at run time), safetensors only, in the configured dtype,
``trust_remote_code`` off unless the config turns it on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from polymath.errors import ModelError

Dtype = Literal["float32", "bfloat16", "float16"]


@dataclass(frozen=True)
class LoadOptions:
    """How a model folder is loaded (``model.dtype`` and ``model.trust_remote_code`` of the config)."""

    dtype: Dtype = "float32"
    trust_remote_code: bool = False


def default_device() -> str | None:
    """Where a stage that samples puts a model it loads: the (first visible) GPU when there is one."""
    import torch

    return "cuda" if torch.cuda.is_available() else None


def load_model(path: Path | str, options: LoadOptions | None = None, device: str | None = None):
    """(model, tokenizer) from a local folder with config.json and safetensors weights, as ``options`` say."""
    options = options or LoadOptions()
    import torch
    from transformers import AutoModelForCausalLM

    folder = Path(path)
    if not (folder / "config.json").exists():
        raise ModelError(
            f"{folder}: not a Hugging Face model folder (no config.json); set model.path to a folder "
            "written by save_pretrained, or use model.source=tiny|smollm"
        )
    if not any(folder.glob("*.safetensors")):
        raise ModelError(f"{folder}: no .safetensors weights; re-save the model with safe_serialization=True")
    model = AutoModelForCausalLM.from_pretrained(
        folder, trust_remote_code=options.trust_remote_code, dtype=getattr(torch, options.dtype), use_safetensors=True
    )
    tokenizer = load_tokenizer(folder, options.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device:
        model.to(device)
    return model, tokenizer


def load_tokenizer(folder: Path | str, trust_remote_code: bool = False):
    """The folder's tokenizer as saved.

    AutoTokenizer maps a qwen2 folder to Qwen2Tokenizer and rebuilds its pre-tokenizer, which would
    drop the spaces of the tiny model's character vocabulary; a folder saved as a plain
    PreTrainedTokenizerFast is loaded as exactly that.
    """
    import json

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config_file = Path(folder) / "tokenizer_config.json"
    if config_file.exists() and json.loads(config_file.read_text()).get("tokenizer_class") in {
        "PreTrainedTokenizerFast",
        "TokenizersBackend",
    }:
        return PreTrainedTokenizerFast.from_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
