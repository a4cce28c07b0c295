"""Sampling with vLLM, an optional extra (the ``gpu`` extra: ``make install-gpu``, CUDA).

vLLM returns only the top ``config.vllm_logprobs`` log-probs per token, so the
entropy is estimated over those tokens: exact when the sampling distribution
(after top-p) has no more tokens than that, a slight underestimate otherwise.
The engine is built with ``logprobs_mode="processed_logprobs"`` so the
log-probs are those of the distribution tokens are drawn from (temperature and
top-p applied), as on the HF backend.

Everything here takes the engine, ``SamplingParams`` and ``LoRARequest``
classes as arguments with vLLM's as defaults, so the logic runs (and is tested)
without vLLM installed.
"""

from __future__ import annotations

import importlib.util
import math
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluation.config import EvalConfig
from evaluation.samples import Sample
from polymath.errors import ConfigError, ModelError


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


#: The optional dependency group (pyproject.toml) that brings vLLM, and the command that installs it locked.
GPU_EXTRA = "gpu"
INSTALL_HINT = f"make install-gpu (the locked '.[{GPU_EXTRA}]' stack)"


def require_vllm() -> None:
    if not vllm_available():
        raise ConfigError(
            f"evaluate.backend is 'vllm' but vllm is not installed; install it on a CUDA machine with "
            f"{INSTALL_HINT}, or set evaluate.backend: hf"
        )


# The max_lora_rank values vLLM accepts (its LoRA kernels are compiled for these).
SUPPORTED_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def adapter_rank(adapter_dir: Path | str) -> int:
    """The largest LoRA rank of a peft adapter folder (``r``, or its ``rank_pattern``'s largest value)."""
    import json

    path = Path(adapter_dir) / "adapter_config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read the adapter's config ({exc}); pass a peft adapter folder") from None
    return max([int(config.get("r", 8)), *map(int, (config.get("rank_pattern") or {}).values())])


def max_lora_rank(rank: int) -> int:
    """The smallest rank vLLM supports that holds ``rank``."""
    for supported in SUPPORTED_LORA_RANKS:
        if rank <= supported:
            return supported
    raise ConfigError(
        f"the adapter has rank {rank}, above the largest LoRA rank vLLM serves ({SUPPORTED_LORA_RANKS[-1]}); "
        f"merge with a rank cap (polymath merge --rank {SUPPORTED_LORA_RANKS[-1]}, or merge.rank in the config), "
        "or evaluate with evaluate.backend: hf"
    )


def _folder_with(path: Path | str, marker: str, what: str, fix: str) -> Path:
    """``path`` as a folder, or ModelError when it lacks ``marker`` (the file that makes it ``what``)."""
    folder = Path(path)
    if not (folder / marker).exists():
        raise ModelError(f"{folder}: not {what} (no {marker}); {fix}")
    return folder


def load_engine(model_path: Path | str, *, enable_lora: bool = False, max_lora_rank: int = 64,
                seed: int = 0, max_logprobs: int = 20, **engine_kwargs: Any):
    """A ``vllm.LLM`` for a local model folder (``save_pretrained`` output)."""
    require_vllm()
    from vllm import LLM

    folder = _folder_with(model_path, "config.json", "a Hugging Face model folder",
                          "vLLM loads models by path, pass the folder the train or merge stage saved")
    kwargs = dict(model=str(folder), seed=seed, max_logprobs=max_logprobs, enable_lora=enable_lora, **engine_kwargs)
    if enable_lora:
        kwargs["max_lora_rank"] = max_lora_rank
    try:
        return LLM(logprobs_mode="processed_logprobs", **kwargs)
    except TypeError:
        # vLLM before 0.10.2 has no logprobs_mode: its log-probs are the raw model's
        return LLM(**kwargs)


# The process's one engine: vLLM reserves a share of the GPU when an engine starts, so a second engine in the
# same process fails to start (or starves) while the first holds its share. Evaluations and the scale points of a
# merge sweep run in one process reuse it: same base model, a LoRA request per adapter.
_SHARED: dict[str, Any] = {}


def shared_engine(model_path: Path | str, *, lora_rank: int | None, **options: Any):
    """The process's engine for ``model_path``: the one already running when it serves this model with these
    ``options`` (load_engine's) and LoRA adapters up to ``lora_rank`` (None: no adapter); else the running one
    is released and a new one started (LoRA on, ``max_lora_rank`` the largest rank asked for so far)."""
    key = (str(Path(model_path).resolve()), tuple(sorted((k, repr(v)) for k, v in options.items())))
    rank = _SHARED["rank"] if _SHARED.get("key") == key else 0
    if _SHARED.get("key") == key and (lora_rank or 0) <= rank:
        return _SHARED["engine"]
    needed = max(rank, lora_rank or 0)
    release_engine()
    engine = load_engine(model_path, enable_lora=needed > 0, max_lora_rank=needed or 64, **options)
    _SHARED.update(key=key, engine=engine, rank=needed)
    return engine


def release_engine() -> None:
    """Stop the process's engine and give its GPU memory back (a no-op when none is running)."""
    engine = _SHARED.pop("engine", None)
    _SHARED.clear()
    if engine is None:
        return
    shutdown = getattr(getattr(engine, "llm_engine", None), "shutdown", None)
    if callable(shutdown):
        shutdown()
    del engine
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def lora_request(adapter_dir: Path | str, name: str, request_cls=None):
    """A ``LoRARequest`` for a peft adapter folder; the id is stable per folder."""
    if request_cls is None:
        require_vllm()
        from vllm.lora.request import LoRARequest as request_cls
    folder = _folder_with(adapter_dir, "adapter_config.json", "a peft adapter folder",
                          "pass the folder written by the train or merge stage")
    lora_id = zlib.crc32(str(folder.resolve()).encode()) % (2**31 - 1) + 1
    return request_cls(lora_name=name, lora_int_id=lora_id, lora_path=str(folder))


def vllm_generate(engine, prompts: Sequence[str], config: EvalConfig, seed: int, *,
                  lora=None, params_cls=None) -> list[list[Sample]]:
    """k samples for each prompt, in prompt order, from ``engine.generate``."""
    if params_cls is None:
        require_vllm()
        from vllm import SamplingParams as params_cls
    params = params_cls(
        n=config.k,
        temperature=config.temperature,
        top_p=config.top_p,
        max_tokens=config.cap,
        logprobs=config.vllm_logprobs,
        seed=seed,
    )
    kwargs = {"lora_request": lora} if lora is not None else {}
    out = []
    # In chunks: each chunk's outputs become samples (and their logprob dicts are freed) before the next is sent.
    for start in range(0, len(prompts), config.vllm_chunk_prompts):
        chunk = list(prompts[start : start + config.vllm_chunk_prompts])
        results = engine.generate(chunk, params, **kwargs)
        if len(results) != len(chunk):
            raise ModelError(f"vLLM returned {len(results)} results for {len(chunk)} prompts")
        for result in results:
            completions = sorted(result.outputs, key=lambda c: getattr(c, "index", 0))
            out.append([_to_sample(c) for c in completions])
    return out


def _to_sample(completion) -> Sample:
    token_ids = list(completion.token_ids)
    positions = completion.logprobs or []
    entropies, logprob_sum = [], 0.0
    for token, top in zip(token_ids, positions):
        values = [lp.logprob for lp in top.values() if math.isfinite(lp.logprob)]
        entropies.append(-sum(math.exp(v) * v for v in values))
        chosen = top.get(token)
        logprob_sum += chosen.logprob if chosen is not None else math.nan
    if not positions:
        cumulative = getattr(completion, "cumulative_logprob", None)
        logprob_sum = float(cumulative) if cumulative is not None else math.nan
    return Sample(
        text=completion.text,
        token_ids=tuple(token_ids),
        mean_entropy=sum(entropies) / len(entropies) if entropies else math.nan,
        sum_logprob=logprob_sum,
        hit_cap=getattr(completion, "finish_reason", None) == "length",
    )
