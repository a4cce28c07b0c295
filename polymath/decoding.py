"""Sampling with a transformers model: a KV-cached loop that drops each row at its EOS, with per-token statistics.

``generate`` keeps every row of a batch until the last one ends, so one completion that runs to the token cap
makes the whole batch run there; on reasoning chains, where about one sample in a hundred loops to the cap,
nearly every batch of a few hundred rows did. This loop samples the same way (the model's logits, then
temperature and top-p, then one draw per row) but removes finished rows from the batch and from the cache after
each step, so a batch costs what its rows need. Evaluation, the warm start's probes and training rollouts all
sample through it.

The statistics are those of the distribution each token is drawn from: its entropy, and the drawn token's
log-probability under it. Greedy decoding (temperature 0) records the statistics of the temperature-1
distribution it takes the argmax of.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from transformers import DynamicCache, TopPLogitsWarper

from polymath.errors import ModelError


@dataclass(frozen=True)
class Decoding:
    """How tokens are drawn: temperature (0: greedy), nucleus top-p, and the most tokens per completion."""

    temperature: float
    top_p: float
    cap: int


@dataclass
class Decoded:
    """Per row of the batch: the tokens drawn (its EOS included when it ended), and per token the entropy of the
    distribution it was drawn from and its log-probability under it."""

    tokens: list[list[int]]
    entropies: list[list[float]]
    logprobs: list[list[float]]
    ended: list[bool]
    """Whether the row ended at an EOS (False: it reached the cap)."""


def eos_ids(model, tokenizer) -> list[int]:
    """The ids that end a completion: the generation config's and the tokenizer's EOS (as vLLM and TRL stop)."""
    ids = []
    for eos in (model.generation_config.eos_token_id, tokenizer.eos_token_id):
        ids += [eos] if isinstance(eos, int) else list(eos or [])
    ids = list(dict.fromkeys(ids))
    if not ids:
        raise ModelError(
            f"{getattr(model, 'name_or_path', 'model')}: no EOS token in the generation config or tokenizer; "
            "set eos_token in the tokenizer (or generation_config.json) so completions can end"
        )
    return ids


def warp(logits: torch.Tensor, decoding: Decoding) -> torch.Tensor:
    """Log-probabilities of the sampling distribution: temperature, then top-p (greedy: temperature 1)."""
    scores = logits.float()
    if decoding.temperature > 0:
        if decoding.temperature != 1.0:
            scores = scores / decoding.temperature
        if decoding.top_p < 1.0:
            scores = TopPLogitsWarper(decoding.top_p)(None, scores)
    return torch.log_softmax(scores, dim=-1)


def _cache_argument(model) -> str:
    """The name the model's forward takes its KV cache under (``cache`` from transformers 5.25)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model passes it on
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _forward(model, ids, mask, positions, cache, cache_name: str, **kwargs) -> torch.Tensor:
    """Last-position logits of one cached forward pass."""
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{cache_name: cache},
                **kwargs)
    return out.logits[:, -1]


@torch.inference_mode()
def sample_tokens(model, ids: torch.Tensor, mask: torch.Tensor, decoding: Decoding, eos: list[int],
                  generator: torch.Generator | None) -> Decoded:
    """Continue each left-padded row of ``ids`` until its EOS or ``decoding.cap`` tokens.

    ``generator`` None draws from torch's global RNG (a trainer's checkpoint saves and restores its state).
    """
    rows, cap = ids.shape[0], decoding.cap
    eos_t = torch.tensor(eos, device=ids.device)
    out = Decoded([[] for _ in range(rows)], [[] for _ in range(rows)], [[] for _ in range(rows)], [False] * rows)
    active = torch.arange(rows, device=ids.device)
    cache, cache_name = DynamicCache(config=model.config), _cache_argument(model)  # once, not per token
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = _forward(model, ids, mask, positions, cache, cache_name, logits_to_keep=1)
    last = positions[:, -1]
    for step in range(cap):
        logp = warp(logits, decoding)
        if decoding.temperature > 0:
            nxt = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
        else:
            nxt = logp.argmax(dim=-1)
        entropy = torch.special.entr(logp.exp()).sum(-1)  # entr(0) = 0: tokens cut by top-p add nothing
        chosen = logp.gather(1, nxt[:, None]).squeeze(1)
        done = torch.isin(nxt, eos_t)
        for row, token, h, lp, d in zip(active.tolist(), nxt.tolist(), entropy.tolist(), chosen.tolist(),
                                        done.tolist()):
            out.tokens[row].append(token)
            out.entropies[row].append(h)
            out.logprobs[row].append(lp)
            out.ended[row] = d
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
        logits = _forward(model, nxt[:, None], mask, last[:, None], cache, cache_name)
    return out
