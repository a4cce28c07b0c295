"""Sampling with transformers ``generate``, with per-token statistics.

Temperature and top-p are applied by our own logits processors, followed by a
recorder, so the recorder sees exactly the distribution each token is drawn
from (``generate`` would otherwise append its warpers after any custom
processor). The recorder keeps two numbers per row and step: the entropy of
that distribution and, one step later when the drawn token is known, the
token's log-probability. Memory stays at one (rows x vocab) tensor, where
``output_scores`` would keep one per generated token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from evaluation.config import EvalConfig
from evaluation.samples import Sample
from polymath.errors import ModelError


class TokenStatsRecorder(LogitsProcessor):
    """Records entropy and drawn-token log-prob of the final sampling distribution.

    Must be the last processor: it reads the scores every earlier processor
    produced and passes them through unchanged.
    """

    def __init__(self) -> None:
        self.entropy: list[torch.Tensor] = []
        self.logprob: list[torch.Tensor] = []
        self._last: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._last is not None:
            self._take(input_ids[:, -1])
        logp = torch.log_softmax(scores.float(), dim=-1)
        # entr(0) = 0, so tokens removed by top-p (probability 0) add nothing
        self.entropy.append(torch.special.entr(logp.exp()).sum(dim=-1))
        self._last = logp
        return scores

    def _take(self, tokens: torch.Tensor) -> None:
        self.logprob.append(self._last.gather(1, tokens[:, None].to(self._last.device)).squeeze(1))

    def finish(self, sequences: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(entropy, logprob), each (rows, steps), once generation has returned."""
        if self._last is not None:
            self._take(sequences[:, -1])
            self._last = None
        return torch.stack(self.entropy, dim=1), torch.stack(self.logprob, dim=1)


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


def _processors(config: EvalConfig, recorder: TokenStatsRecorder) -> LogitsProcessorList:
    procs: list[LogitsProcessor] = []
    if config.temperature > 0 and config.temperature != 1.0:
        procs.append(TemperatureLogitsWarper(config.temperature))
    if config.temperature > 0 and config.top_p < 1.0:
        procs.append(TopPLogitsWarper(config.top_p))
    return LogitsProcessorList([*procs, recorder])


@torch.inference_mode()
def hf_generate(model, tokenizer, prompts: Sequence[str], config: EvalConfig, seed: int) -> list[list[Sample]]:
    """k samples for each prompt (``config.k``), in prompt order.

    Greedy decoding (temperature 0) records the statistics of the model's
    distribution at temperature 1, the one greedy takes the argmax of.
    """
    eos_ids = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    device = model.device
    was_training = model.training
    model.eval()
    do_sample = config.temperature > 0
    out: list[list[Sample]] = []
    fork_devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(seed)
            batches = range(0, len(prompts), config.batch_size)
            for start in tqdm(batches, desc="sampling", unit="batch", leave=False, disable=None):
                batch = list(prompts[start : start + config.batch_size])
                # TRL conditions on prompts tokenized this way; evaluate what was trained
                enc = tokenizer(
                    batch, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
                ).to(device)
                recorder = TokenStatsRecorder()
                sequences = model.generate(
                    **enc,
                    do_sample=do_sample,
                    temperature=1.0,
                    top_p=1.0,
                    top_k=0,
                    min_p=None,
                    num_return_sequences=config.k,
                    max_new_tokens=config.cap,
                    logits_processor=_processors(config, recorder),
                    pad_token_id=pad_id,
                    eos_token_id=eos_ids,
                )
                generated = sequences[:, enc["input_ids"].shape[1] :]
                entropy, logprob = recorder.finish(sequences)
                samples = _to_samples(generated, entropy, logprob, eos_ids, tokenizer, config.cap)
                out.extend(_split(samples, config.k))
    finally:
        model.train(was_training)
    return out


def _to_samples(generated, entropy, logprob, eos_ids: list[int], tokenizer, max_new_tokens: int) -> list[Sample]:
    rows, steps = generated.shape
    is_eos = torch.isin(generated, torch.tensor(eos_ids, device=generated.device))
    has_eos = is_eos.any(dim=1)
    # length up to and including the first EOS; padding after it is not the model's choice
    lengths = torch.where(has_eos, is_eos.int().argmax(dim=1) + 1, torch.full_like(has_eos, steps, dtype=torch.long))
    mask = torch.arange(steps, device=generated.device)[None, :] < lengths[:, None]
    # where(), not a product: a pad token top-p removed has log-prob -inf
    mean_entropy = torch.where(mask, entropy, 0.0).sum(1) / lengths
    sum_logprob = torch.where(mask, logprob, 0.0).sum(1)
    samples = []
    for r in range(rows):
        ids = generated[r, : int(lengths[r])].tolist()
        text_ids = ids[:-1] if bool(has_eos[r]) else ids
        samples.append(
            Sample(
                text=tokenizer.decode(text_ids, skip_special_tokens=True),
                token_ids=tuple(ids),
                mean_entropy=float(mean_entropy[r]),
                sum_logprob=float(sum_logprob[r]),
                hit_cap=not bool(has_eos[r]) and steps >= max_new_tokens,
            )
        )
    return samples


def _split(samples: list[Sample], k: int) -> list[list[Sample]]:
    # generate() returns the k sequences of a prompt next to each other
    return [samples[i : i + k] for i in range(0, len(samples), k)]
