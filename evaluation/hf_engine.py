"""Sampling with a transformers model through polymath's KV-cached loop (polymath/decoding.py): k samples per
prompt, each row dropped at its EOS, with per-token entropy and log-probability."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from evaluation.config import EvalConfig
from evaluation.samples import Sample
from polymath.decoding import Decoding, eos_ids, sample_tokens


def decoding(config: EvalConfig) -> Decoding:
    return Decoding(temperature=config.temperature, top_p=config.top_p, cap=config.cap)


@torch.inference_mode()
def hf_generate(model, tokenizer, prompts: Sequence[str], config: EvalConfig, seed: int) -> list[list[Sample]]:
    """k samples for each prompt (``config.k``), in prompt order; seeded, the global RNG left alone."""
    eos = eos_ids(model, tokenizer)
    device = model.device
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    out: list[list[Sample]] = []
    try:
        batches = range(0, len(prompts), config.batch_size)
        for start in tqdm(batches, desc="sampling", unit="batch", leave=False, disable=None):
            batch = list(prompts[start : start + config.batch_size])
            # TRL conditions on prompts tokenized this way; evaluate what was trained
            enc = tokenizer(batch, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
            ids = enc["input_ids"].to(device).repeat_interleave(config.k, dim=0)
            mask = enc["attention_mask"].to(device).repeat_interleave(config.k, dim=0)
            samples = _sample(model, tokenizer, ids, mask, config, eos, generator)
            out.extend(samples[i : i + config.k] for i in range(0, len(samples), config.k))
    finally:
        model.train(was_training)
    return out


def _sample(model, tokenizer, ids, mask, config: EvalConfig, eos: list[int], generator) -> list[Sample]:
    drawn = sample_tokens(model, ids, mask, decoding(config), eos, generator)
    samples = []
    for tokens, entropies, logprobs, ended in zip(drawn.tokens, drawn.entropies, drawn.logprobs, drawn.ended):
        text_ids = tokens[:-1] if ended else tokens
        samples.append(
            Sample(
                text=tokenizer.decode(text_ids, skip_special_tokens=True),
                token_ids=tuple(tokens),
                mean_entropy=sum(entropies) / len(entropies),
                sum_logprob=sum(logprobs),
                hit_cap=not ended and len(tokens) >= config.cap,
            )
        )
    return samples
