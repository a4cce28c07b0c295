"""Sampling with a transformers model: a KV-cached loop that drops each row at its EOS, with per-token statistics.

``generate`` keeps every row of a batch until the last one ends, so one
completion that runs to the token cap makes the whole batch run there; on
reasoning chains, where about one sample in a hundred loops to the cap, nearly
every batch of a few hundred rows did. This loop samples the same way (the
model's logits, then temperature and top-p, then one draw per row) but removes
finished rows from the batch and from the cache after each step, so a batch
costs what its rows need.

The statistics are those of the distribution each token is drawn from: its
entropy, and the drawn token's log-probability under it. Greedy decoding
(temperature 0) records the statistics of the temperature-1 distribution it
takes the argmax of.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, TopPLogitsWarper

from evaluation.config import EvalConfig
from evaluation.samples import Sample
from polymath.errors import ModelError


def _eos_ids(model, tokenizer) -> list[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    if not ids:
        raise ModelError(
            f"{getattr(model, 'name_or_path', 'model')}: no EOS token in the generation config or tokenizer; "
            "set eos_token in the tokenizer (or generation_config.json) so completions can end"
        )
    return ids


def warp(logits: torch.Tensor, config: EvalConfig) -> torch.Tensor:
    """Log-probabilities of the sampling distribution: temperature, then top-p (greedy: temperature 1)."""
    scores = logits.float()
    if config.temperature > 0:
        if config.temperature != 1.0:
            scores = scores / config.temperature
        if config.top_p < 1.0:
            scores = TopPLogitsWarper(config.top_p)(None, scores)
    return torch.log_softmax(scores, dim=-1)


@torch.inference_mode()
def hf_generate(model, tokenizer, prompts: Sequence[str], config: EvalConfig, seed: int) -> list[list[Sample]]:
    """k samples for each prompt (``config.k``), in prompt order; seeded, the global RNG left alone."""
    eos_ids = _eos_ids(model, tokenizer)
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
            samples = _sample(model, tokenizer, ids, mask, config, eos_ids, generator)
            out.extend(samples[i : i + config.k] for i in range(0, len(samples), config.k))
    finally:
        model.train(was_training)
    return out


def _forward(model, ids, mask, positions, cache, **kwargs) -> torch.Tensor:
    """Last-position logits of one cached forward pass (the cache argument is ``cache`` from transformers 5.25)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model passes it on
    name = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{name: cache}, **kwargs)
    return out.logits[:, -1]


def _sample(model, tokenizer, ids, mask, config: EvalConfig, eos_ids: list[int], generator) -> list[Sample]:
    rows, cap = ids.shape[0], config.cap
    eos = torch.tensor(eos_ids, device=ids.device)
    tokens: list[list[int]] = [[] for _ in range(rows)]
    entropies: list[list[float]] = [[] for _ in range(rows)]
    logprobs: list[list[float]] = [[] for _ in range(rows)]
    ended = [False] * rows
    active = torch.arange(rows, device=ids.device)
    cache = DynamicCache(config=model.config)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = _forward(model, ids, mask, positions, cache, logits_to_keep=1)
    last = positions[:, -1]
    for step in range(cap):
        logp = warp(logits, config)
        if config.temperature > 0:
            nxt = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
        else:
            nxt = logp.argmax(dim=-1)
        entropy = torch.special.entr(logp.exp()).sum(-1)  # entr(0) = 0: tokens cut by top-p add nothing
        chosen = logp.gather(1, nxt[:, None]).squeeze(1)
        done = torch.isin(nxt, eos)
        for row, token, h, lp, d in zip(active.tolist(), nxt.tolist(), entropy.tolist(), chosen.tolist(),
                                        done.tolist()):
            tokens[row].append(token)
            entropies[row].append(h)
            logprobs[row].append(lp)
            ended[row] = d
        keep = ~done
        if step == cap - 1 or not keep.any():
            break
        if not keep.all():
            # Finished rows leave the batch and the cache: the rest no longer wait for them.
            index = keep.nonzero().squeeze(1)
            cache.batch_select_indices(index)
            active, mask, last, nxt = active[index], mask[index], last[index], nxt[index]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        last = last + 1
        logits = _forward(model, nxt[:, None], mask, last[:, None], cache)
    samples = []
    for row in range(rows):
        text_ids = tokens[row][:-1] if ended[row] else tokens[row]
        samples.append(
            Sample(
                text=tokenizer.decode(text_ids, skip_special_tokens=True),
                token_ids=tuple(tokens[row]),
                mean_entropy=sum(entropies[row]) / len(entropies[row]),
                sum_logprob=sum(logprobs[row]),
                hit_cap=not ended[row] and len(tokens[row]) >= cap,
            )
        )
    return samples
