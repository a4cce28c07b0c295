"""Configuration of the evaluate stage's sampling."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


# The completion cap when neither the config nor the problems' worked solutions give one.
FALLBACK_CAP = 256


class EvalConfig(BaseModel):
    """How many completions to sample per problem, and how."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    k: int = Field(8, ge=1)
    """Samples per problem (n of pass@k); the summaries report k = 1, 2, 4, ... up to this."""

    temperature: float = Field(1.0, ge=0.0)
    """Sampling temperature; 0 decodes greedily (then k must be 1)."""

    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""

    max_new_tokens: int | None = Field(None, ge=1)
    """Longest completion, in tokens; longer ones are cut (``hit_cap`` in eval_samples). None: 1.5x the longest
    worked solution over the benchmarks evaluated (256 when no problem carries one); a value below a benchmark's
    longest solution is an error naming it."""

    batch_size: int = Field(8, ge=1)
    """Prompts per generate call on the HF backend; each yields k sequences, so rows = batch_size * k."""

    seed: int = 0
    """Seed of the sampling; the same config, model and prompts give the same samples."""

    max_problems_per_benchmark: int | None = Field(None, ge=1)
    """Evaluate only the first this-many problems of each benchmark (None: all of them)."""

    domains: list[str] | None = Field(None, min_length=1)
    """The evaluate stage samples only these domains of the test split (None: every domain). A study of one
    training domain saves the others' sampling: the entropy experiment evaluates its training domain alone."""

    reference_entropy: bool = False
    """Also measure the model's teacher-forced entropy along each evaluated problem's reference solution (fixed
    contexts, the same tokens for every model), split into digit and other positions: eval_reference_entropy."""

    backend: Literal["hf", "vllm", "auto"] = "auto"
    """hf: transformers generate; vllm: vLLM (optional extra, CUDA); auto: vllm when it is installed,
    a GPU is present and the model is given as a path, else hf."""

    correct_threshold: float = Field(1.0, ge=0.0, le=1.0)
    """A sample counts as correct when the verifier's score reaches this (partial credit stays below 1)."""

    vllm_logprobs: int = Field(20, ge=1)
    """vLLM only: log-probs returned per token; the entropy is estimated over these top tokens (exact when the
    sampling distribution after top-p has no more tokens than this)."""

    vllm_chunk_prompts: int = Field(64, ge=1)
    """vLLM only: prompts per ``generate`` call; each chunk's outputs are reduced to samples before the next."""

    vllm_memory_share: float = Field(0.85, gt=0.0, le=1.0)
    """vLLM only: the share of GPU memory the engine reserves (``gpu_memory_utilization``). One engine per
    process serves every evaluation and sweep scale it runs."""

    @property
    def cap(self) -> int:
        """The token cap the engines apply: ``max_new_tokens``, or FALLBACK_CAP when it is unset."""
        return self.max_new_tokens if self.max_new_tokens is not None else FALLBACK_CAP

    @model_validator(mode="after")
    def _greedy_is_single(self) -> EvalConfig:
        if self.temperature == 0 and self.k > 1:
            raise ValueError(
                f"evaluate.temperature is 0 (greedy decoding), which gives k={self.k} identical samples; "
                "set evaluate.k: 1 or a temperature above 0"
            )
        return self
