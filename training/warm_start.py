"""Warm start of the tiny demo model: supervised training on worked solutions, stopped inside an accuracy band.

Each example is ``prompt + PLAIN_SUFFIX -> solution<eos>`` with the loss on the
solution only. RL needs headroom: a model that already solves a domain, or never
does, gives GRPO groups without reward variance. So every ``probe_every`` steps
the model samples ``probe_samples`` completions at temperature 1 for
``probe_problems`` held-out training problems per domain, and

- a domain below the band gets more examples (weight up to 2 at accuracy 0),
  one above the middle of ``band`` fewer (its weight falls linearly to 10% at
  the top of the band): the quick domains wait while the slow ones catch up.
  A floor, not zero: a domain that gets no examples is forgotten within a few
  dozen steps and relearned, and its accuracy swings across the whole band;
- a check where every domain is inside the band is confirmed by ``confirm_samples`` more samples per probe
  problem (a new seed); the warm start stops there only when the pooled estimate is inside the band too, so a
  lucky probe (about 3.5 points of standard error at 48 x 4) does not decide;
- every other exit (``sft_steps`` spent, or every domain above the band: an overshoot) restores the weights
  of the check closest to the band (least total accuracy outside it, pooled where confirmed). The summary
  records the step kept, its accuracies and why.

Batches mix the domains at random: batches sorted into length buckets ran
1.9x faster per step but learned far slower per step (a bucket is nearly one
domain, so consecutive steps pull the shared weights in different directions).
A short plain PyTorch loop: deterministic under the seed, and at this size the
per-step overhead of a full trainer would dominate the step itself.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

from polymath.records import Problem
from polymath.errors import ModelError

from polymath.prompting import PLAIN_SUFFIX
from polymath.threads import torch_threads

Progress = Callable[[int, int, float], None]
Scorer = Callable[[Problem, str], float]
# (model, tokenizer, prompts, samples per prompt, max new tokens, seed) -> completions per prompt
Sampler = Callable[..., list[list[str]]]

_POOL_BATCHES = 8
_MIN_WEIGHT = 0.1


def split_probe(problems: list[Problem], per_domain: int) -> tuple[list[Problem], dict[str, list[Problem]]]:
    """(examples, probe by domain): the last ``per_domain`` problems of each domain are held out."""
    by_domain: dict[str, list[Problem]] = {}
    for p in problems:
        by_domain.setdefault(p.domain, []).append(p)
    if per_domain == 0:
        return list(problems), {}
    probe = {d: ps[-per_domain:] for d, ps in by_domain.items() if len(ps) > 2 * per_domain}
    held = {p.id for ps in probe.values() for p in ps}
    return [p for p in problems if p.id not in held], probe


def domain_weights(accuracy: dict[str, float], band: tuple[float, float]) -> dict[str, float]:
    """Sampling weight per domain: 2 - acc / low below the band, 1 up to its middle, then linearly to 0.1 at its
    top and above."""
    low, high = band
    mid = (low + high) / 2
    weights = {}
    for domain, acc in accuracy.items():
        if acc < low:
            weights[domain] = 2.0 - acc / low
        elif acc <= mid:
            weights[domain] = 1.0
        else:
            weights[domain] = max(_MIN_WEIGHT, 1.0 - (1.0 - _MIN_WEIGHT) * (acc - mid) / (high - mid))
    return weights


def band_distance(accuracy: dict[str, float], band: tuple[float, float]) -> float:
    """Total accuracy outside the band, summed over domains (0: every domain inside)."""
    low, high = band
    return sum(max(0.0, low - a) + max(0.0, a - high) for a in accuracy.values())


def pooled(first: dict[str, float], n_first: int, second: dict[str, float], n_second: int) -> dict[str, float]:
    """Per-domain accuracy of two probes of the same problems, weighted by their samples per problem."""
    return {d: (first[d] * n_first + second[d] * n_second) / (n_first + n_second) for d in first}


def in_band(accuracy: dict[str, float], band: tuple[float, float]) -> bool:
    return bool(accuracy) and band_distance(accuracy, band) == 0.0


def _encode(problems: list[Problem], tokenizer, max_positions: int) -> list[tuple[str, list[int], list[int]]]:
    missing = [p.id for p in problems if not p.solution]
    if missing:
        raise ModelError(
            f"the tiny model's warm start needs a worked solution per problem; {len(missing)} have none "
            f"(first: {missing[0]!r}); use the embedded domains or a source with solutions"
        )
    eos = tokenizer.eos_token_id
    out = []
    for p in problems:
        prompt_ids = tokenizer(p.prompt + PLAIN_SUFFIX, add_special_tokens=False)["input_ids"]
        solution_ids = tokenizer(p.solution, add_special_tokens=False)["input_ids"] + [eos]
        if len(prompt_ids) + len(solution_ids) <= max_positions:
            out.append((p.domain, prompt_ids, solution_ids))
    if not out:
        raise ModelError(f"no warm-start example fits model.tiny.max_positions={max_positions}; raise it")
    return out


class _Batches:
    """Random batches drawn with per-domain weights."""

    def __init__(self, encoded, batch_size: int, seed: int):
        self.encoded = encoded
        self.batch_size = batch_size
        self.rng = random.Random(seed)
        self.by_domain: dict[str, list[int]] = {}
        for i, (domain, _, _) in enumerate(encoded):
            self.by_domain.setdefault(domain, []).append(i)
        self.weights = {d: 1.0 for d in self.by_domain}
        self.queue: list[list[int]] = []

    def set_weights(self, weights: dict[str, float]) -> None:
        self.weights = {d: weights.get(d, 1.0) for d in self.by_domain}
        self.queue.clear()

    def next(self) -> list[int]:
        if not self.queue:
            domains = list(self.by_domain)
            total = sum(self.weights[d] * len(self.by_domain[d]) for d in domains)
            if total == 0:
                self.weights = {d: 1.0 for d in domains}
                total = sum(len(self.by_domain[d]) for d in domains)
            pool = []
            for _ in range(_POOL_BATCHES * self.batch_size):
                # A domain's share is its weight times its size, so equal weights keep the data's own mixture.
                r = self.rng.random() * total
                for d in domains:
                    r -= self.weights[d] * len(self.by_domain[d])
                    if r <= 0:
                        break
                pool.append(self.rng.choice(self.by_domain[d]))
            self.queue = [pool[i : i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
        return self.queue.pop()


def hf_sampler(model, tokenizer, prompts: list[str], samples: int, max_new_tokens: int, seed: int) -> list[list[str]]:
    """``samples`` completions per prompt at temperature 1 with transformers' ``generate``."""
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        seqs = model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                              num_return_sequences=samples, max_new_tokens=max_new_tokens,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    texts = tokenizer.batch_decode(seqs[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return [texts[i : i + samples] for i in range(0, len(texts), samples)]


def probe_accuracy(model, tokenizer, probe: dict[str, list[Problem]], samples: int, max_new_tokens: int,
                   scorer: Scorer, seed: int, sampler: Sampler = hf_sampler) -> dict[str, float]:
    """Mean score per domain of ``samples`` completions per problem at temperature 1."""
    import torch

    was_training = model.training
    model.eval()
    out = {}
    try:
        with torch.inference_mode():
            for domain, problems in probe.items():
                completions = sampler(model, tokenizer, [p.prompt + PLAIN_SUFFIX for p in problems], samples,
                                      max_new_tokens, seed)
                scores = [scorer(p, c) for p, group in zip(problems, completions) for c in group]
                out[domain] = sum(scores) / len(scores)
    finally:
        model.train(was_training)
    return out


def warm_start(model, tokenizer, problems: list[Problem], cfg, scorer: Scorer, progress: Progress | None = None,
               sampler: Sampler = hf_sampler) -> dict:
    """Train ``model`` in place on the problems' solutions; returns the run's summary (probe history included).

    ``cfg`` is a :class:`training.models.TinyModelConfig`; ``scorer(problem, completion)`` scores probe samples,
    which ``sampler`` draws (the pipeline passes evaluation's sampler, which drops each row at its EOS).
    """
    with torch_threads(cfg.threads):
        return _loop(model, tokenizer, problems, cfg, scorer, progress, sampler)


def _loop(model, tokenizer, problems, cfg, scorer, progress, sampler) -> dict:
    import torch

    torch.manual_seed(cfg.seed)
    examples, probe = split_probe(problems, cfg.probe_problems)
    encoded = _encode(examples, tokenizer, cfg.max_positions)
    longest = max(len(b) for _, _, b in encoded)
    batches = _Batches(encoded, cfg.sft_batch_size, cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.sft_lr, weight_decay=0.0, betas=(0.9, 0.98))
    warmup = max(1, cfg.sft_steps // 15)
    model.train()
    losses: list[float] = []
    history: list[dict] = []
    stopped = "max_steps"
    t0 = time.perf_counter()
    probe_seconds = 0.0
    step = 0
    best: tuple[float, int, dict] | None = None
    for step in range(1, cfg.sft_steps + 1):
        batch = [encoded[i] for i in batches.next()]
        width = max(len(a) + len(b) for _, a, b in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for i, (_, a, b) in enumerate(batch):
            seq = a + b
            ids[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
            labels[i, len(a) : len(seq)] = torch.tensor(b)
        lr = cfg.sft_lr * min(1.0, step / warmup) * (1.0 - 0.9 * (step - 1) / cfg.sft_steps)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if progress is not None:
            progress(step, cfg.sft_steps, losses[-1])
        if probe and step % cfg.probe_every == 0:
            p0 = time.perf_counter()
            accuracy = probe_accuracy(model, tokenizer, probe, cfg.probe_samples, longest + 8, scorer,
                                      cfg.seed + step, sampler)
            record = {"step": step, "loss": sum(losses[-20:]) / len(losses[-20:]), "accuracy": accuracy}
            if in_band(accuracy, cfg.band) and cfg.confirm_samples:
                more = probe_accuracy(model, tokenizer, probe, cfg.confirm_samples, longest + 8, scorer,
                                      cfg.seed + step + 1_000_003, sampler)
                record["confirm_accuracy"] = more
                accuracy = pooled(accuracy, cfg.probe_samples, more, cfg.confirm_samples)
                record["pooled_accuracy"] = accuracy
            probe_seconds += time.perf_counter() - p0
            weights = domain_weights(accuracy, cfg.band)
            distance = band_distance(accuracy, cfg.band)
            history.append({**record, "weights": weights, "band_distance": distance})
            if best is None or distance <= best[0]:  # ties: the later, longer-trained check
                best = (distance, step, {k: v.detach().clone() for k, v in model.state_dict().items()}, accuracy)
            if in_band(accuracy, cfg.band):
                stopped = "in_band"
                break
            if all(a > cfg.band[1] for a in accuracy.values()):
                stopped = "above_band"
                break
            batches.set_weights(weights)
    kept, kept_accuracy = step, (accuracy if stopped == "in_band" else None)
    if stopped != "in_band" and best is not None:
        if best[1] != step:
            model.load_state_dict(best[2])
        kept, kept_accuracy = best[1], best[3]
    because = {
        "in_band": "every domain inside the band at this check, pooled with its confirmation samples",
        "above_band": f"every domain above the band at step {step}: kept step {kept}, the check closest to the band",
        "max_steps": f"no check in the band within {cfg.sft_steps} steps: kept step {kept}, the check closest to "
                     "the band",
    }[stopped]
    model.eval()
    tail = losses[-20:]
    return {
        "sft_steps": step,
        "sft_kept_step": kept,
        "sft_kept_accuracy": kept_accuracy,
        "sft_max_steps": cfg.sft_steps,
        "sft_stopped": stopped,
        "sft_kept_because": because if history else "no band check (probe_problems 0): the last step",
        "sft_seconds": round(time.perf_counter() - t0, 2),
        "sft_probe_seconds": round(probe_seconds, 2),
        "sft_final_loss": sum(tail) / len(tail),
        "sft_first_loss": losses[0],
        "sft_examples": len(encoded),
        "sft_probe": history,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "loss_is_finite": all(math.isfinite(x) for x in losses),
    }
