"""Training rollouts without vLLM: polymath's KV-cached sampling loop in place of the ``generate`` TRL calls.

TRL's HF path keeps every row of a rollout batch until the longest completion ends; the loop in
polymath/decoding.py drops each row at its EOS and skips ``generate``'s per-step logits processors, so a batch
costs what its rows need. It samples from the same distribution (the trainer's temperature and top-p, top-k
off) and draws from torch's global RNG, whose state a checkpoint saves, so a resumed run draws what the
uninterrupted one would. It returns what TRL's own path returns: completion ids up to and including the first
EOS, and no sampling log-probabilities (importance sampling corrects vLLM's rollouts only).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from accelerate.utils import is_peft_model
from trl.models import unwrap_model_for_generation

from polymath.decoding import Decoding, sample_tokens

ROLLOUT_ENGINES = ("kv-cache", "generate")


@contextmanager
def merged_adapter(model, enabled: bool):
    """The LoRA adapter merged into the base weights for the duration (one matmul per projection instead of
    three); only for float32 base weights, where merging then unmerging rounds by ~1e-7 relative."""
    merge = (enabled and is_peft_model(model)
             and all(p.dtype == torch.float32 for p in model.get_base_model().parameters()))
    if merge:
        model.merge_adapter()
    try:
        yield
    finally:
        if merge:
            model.unmerge_adapter()


def kv_cache_rollouts(trainer, prompt_ids: list[list[int]]) -> list[list[int]]:
    """Completion ids for each prompt of ``prompt_ids`` (TRL has already repeated each prompt once per
    generation), sampled as the trainer's generation config says."""
    args, device = trainer.args, trainer.accelerator.device
    pad = trainer._tokenizer.pad_token_id
    width = max(len(ids) for ids in prompt_ids)
    ids = torch.full((len(prompt_ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for row, prompt in enumerate(prompt_ids):
        ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    decoding = Decoding(temperature=args.temperature, top_p=args.top_p, cap=args.max_completion_length)
    with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator,
                                     gather_deepspeed3_params=args.ds3_gather_for_generation,
                                     gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs) as model:
        was_training = model.training
        model.eval()  # dropout off while sampling, as vLLM samples
        try:
            drawn = sample_tokens(model, ids.to(device), mask.to(device), decoding, list(trainer.eos_token_ids),
                                  generator=None)
        finally:
            model.train(was_training)
    return drawn.tokens
