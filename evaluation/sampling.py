"""Evaluate a model: sample k completions per problem, score them, return eval_samples rows.

The verifier is passed in as ``scorer(problem, completion) -> (extracted_answer,
score)``, so this module knows nothing about answer formats.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from polymath.records import Problem
from evaluation import schema
from evaluation.config import FALLBACK_CAP, EvalConfig
from evaluation.hf_engine import hf_generate
from evaluation.metrics import bigram_novelty
from evaluation.samples import Sample
from evaluation.vllm_engine import (
    adapter_rank,
    lora_request,
    max_lora_rank,
    require_vllm,
    shared_engine,
    vllm_available,
    vllm_generate,
)
from polymath.errors import ConfigError, DataError, ModelError
from polymath.loading import LoadOptions, default_device, load_model
from polymath.prompting import format_prompt

Scorer = Callable[[Problem, str], tuple[str | None, float]]

EVAL_SAMPLE_COLUMNS = schema.TABLES["eval_samples"].column_names


def _is_engine(model) -> bool:
    return not isinstance(model, (torch.nn.Module, str, Path)) and callable(getattr(model, "generate", None))


def resolve_backend(requested: str, model) -> str:
    """'hf' or 'vllm' for the configured backend and the model given.

    ``auto`` picks vLLM for an engine object, or for a model path when vLLM is
    installed and a GPU is present; an in-memory transformers model stays on
    HF, since vLLM would reload weights from disk that may differ from it.
    """
    if requested == "hf":
        return "hf"
    if requested == "vllm":
        if isinstance(model, torch.nn.Module):
            raise ConfigError(
                "evaluate.backend is 'vllm' but the model was given as an in-memory transformers model; "
                "pass the saved model folder (vLLM loads by path) or set evaluate.backend: hf"
            )
        if not _is_engine(model):
            require_vllm()
        return "vllm"
    if requested != "auto":
        raise ConfigError(f"evaluate.backend must be hf, vllm or auto, got {requested!r}")
    if _is_engine(model):
        return "vllm"
    if isinstance(model, (str, Path)) and vllm_available() and torch.cuda.is_available():
        return "vllm"
    return "hf"


def select_problems(benchmark: str, problems: Sequence[Problem], limit: int | None) -> list[Problem]:
    """The problems of ``benchmark`` an evaluation samples: the first ``limit`` (all when None), ids unique."""
    if not problems:
        raise DataError(
            f"benchmark {benchmark!r} has no problems; check its data source or drop it from the evaluate stage"
        )
    seen: set[str] = set()
    for p in problems:
        if p.id in seen:
            raise DataError(
                f"benchmark {benchmark!r} lists problem id {p.id!r} twice; ids must be unique per benchmark "
                "(deduplicate the data or give the copies distinct ids)"
            )
        seen.add(p.id)
    return list(problems[:limit] if limit is not None else problems)


def _score(scorer: Scorer, problem: Problem, text: str) -> tuple[str | None, float]:
    result = scorer(problem, text)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise ConfigError(
            f"the scorer must return (extracted_answer or None, score in [0, 1]), got {result!r} "
            f"for problem {problem.id!r}"
        )
    extracted, score = result
    return (None if extracted is None else str(extracted)), float(score)


# Room above the longest worked solution: a model's own chain may be longer than the reference's.
CAP_MARGIN = 1.5


def longest_solution(problems: Sequence[Problem], tokenizer) -> tuple[int, str] | None:
    """(tokens, problem id) of the longest worked solution, EOS included; None when no problem has one."""
    lengths = [
        (len(tokenizer(p.solution, add_special_tokens=False)["input_ids"]) + 1, p.id) for p in problems if p.solution
    ]
    return max(lengths) if lengths else None


def token_cap(selected: Mapping[str, Sequence[Problem]], tokenizer, configured: int | None) -> int:
    """The completion token cap of an evaluation: ``configured``, or sized from the longest worked solution.

    Unset, it is CAP_MARGIN times the longest solution over every benchmark evaluated, so that a completion
    which drifts into another domain's format can still end. A configured cap below the longest solution of a
    benchmark would cut correct completions: an error naming the benchmark.
    """
    longest = {b: found for b, ps in selected.items() if (found := longest_solution(ps, tokenizer)) is not None}
    if configured is None:
        return math.ceil(CAP_MARGIN * max(n for n, _ in longest.values())) if longest else FALLBACK_CAP
    for benchmark, (n, pid) in longest.items():
        if configured < n:
            raise ConfigError(
                f"evaluate.max_new_tokens is {configured}, but the longest worked solution of benchmark "
                f"{benchmark!r} is {n} tokens (problem {pid!r}): correct completions would be cut. Raise "
                f"evaluate.max_new_tokens to at least {n}, or leave it unset (null) to size it from the data"
            )
    return configured


def evaluate_model(
    model,
    tokenizer,
    problems_by_benchmark: Mapping[str, Sequence[Problem]],
    config: EvalConfig,
    scorer: Scorer,
    model_label: str,
    eval_run: str,
    *,
    adapter_dir: Path | str | None = None,
    load: LoadOptions | None = None,
) -> pd.DataFrame:
    """Sample ``config.k`` completions per problem and score them: eval_samples rows.

    ``model`` is a transformers model (HF backend), a saved model folder, or a
    vLLM engine object (``LLM``-like: ``generate(prompts, params, lora_request=...)``).
    ``adapter_dir`` names a peft adapter to evaluate on top of it; ``load`` says how a folder is loaded
    (dtype, trust_remote_code).
    """
    backend = resolve_backend(config.backend, model)
    selected = {b: select_problems(b, ps, config.max_problems_per_benchmark)
                for b, ps in problems_by_benchmark.items()}
    if not selected:
        raise DataError("no benchmarks to evaluate; list at least one benchmark for the evaluate stage")

    wrapped = None
    if backend == "hf":
        model, tokenizer = hf_model(model, tokenizer, adapter_dir, load)
        wrapped = model if adapter_dir is not None else None

        def generate(prompts: list[str], cfg: EvalConfig) -> list[list[Sample]]:
            return hf_generate(model, tokenizer, prompts, cfg, seed=cfg.seed)
    else:
        lora_rank = max_lora_rank(adapter_rank(adapter_dir)) if adapter_dir is not None else None
        load = load or LoadOptions()
        # samples are seeded per request (vllm_generate), so a reused engine samples what a fresh one would
        engine = model if _is_engine(model) else shared_engine(
            model, lora_rank=lora_rank, max_logprobs=config.vllm_logprobs, dtype=load.dtype,
            trust_remote_code=load.trust_remote_code, gpu_memory_utilization=config.vllm_memory_share,
        )
        lora = lora_request(adapter_dir, model_label) if adapter_dir is not None else None
        if tokenizer is None:
            tokenizer = engine.get_tokenizer()

        def generate(prompts: list[str], cfg: EvalConfig) -> list[list[Sample]]:
            return vllm_generate(engine, prompts, cfg, seed=cfg.seed, lora=lora)

    cfg = config.model_copy(update={"max_new_tokens": token_cap(selected, tokenizer, config.max_new_tokens)})
    rows = []
    try:
        for benchmark, problems in selected.items():
            prompts = [format_prompt(p, tokenizer) for p in problems]
            for problem, samples in zip(problems, generate(prompts, cfg), strict=True):
                novelty = bigram_novelty([s.text for s in samples])
                for idx, (sample, (n_bigrams, new_bigrams)) in enumerate(zip(samples, novelty)):
                    extracted, score = _score(scorer, problem, sample.text)
                    rows.append((
                        eval_run, model_label, benchmark, problem.id, idx, sample.text, extracted, score,
                        score >= config.correct_threshold, sample.n_tokens, extracted is None, sample.hit_cap,
                        sample.mean_entropy if math.isfinite(sample.mean_entropy) else None,
                        sample.sum_logprob if math.isfinite(sample.sum_logprob) else None,
                        n_bigrams, new_bigrams,
                    ))
    finally:
        if wrapped is not None:
            # peft injected the adapter into the caller's model in place; take it out again
            wrapped.unload()
    return samples_frame(rows)


def samples_frame(rows: list[tuple]) -> pd.DataFrame:
    """eval_samples rows as a DataFrame with the table's column order and dtypes."""
    df = pd.DataFrame(rows, columns=EVAL_SAMPLE_COLUMNS)
    ints = {c: np.int32 for c in ("sample_idx", "n_tokens", "n_bigrams", "new_bigrams")}
    floats = {c: np.float64 for c in ("score", "mean_entropy", "sum_logprob")}
    return df.astype({**ints, **floats, "correct": bool, "no_answer": bool, "hit_cap": bool})


def hf_model(model, tokenizer, adapter_dir, load: LoadOptions | None):
    """The transformers model (loaded when ``model`` is a path) with the peft adapter ``adapter_dir`` on top."""
    if isinstance(model, (str, Path)):
        model, loaded_tokenizer = load_model(model, load, device=default_device())  # HF sampling on the GPU
        tokenizer = tokenizer if tokenizer is not None else loaded_tokenizer
    if tokenizer is None:
        raise ConfigError("evaluate_model needs the model's tokenizer for the HF backend; pass tokenizer=")
    if adapter_dir is not None:
        from peft import PeftModel

        if not (Path(adapter_dir) / "adapter_config.json").exists():
            raise ModelError(
                f"{adapter_dir}: not a peft adapter folder (no adapter_config.json); "
                "pass the folder written by the train or merge stage"
            )
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    return model, tokenizer
