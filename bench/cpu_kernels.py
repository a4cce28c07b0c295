"""Benchmark: what MKL's COMPATIBLE branch (POLYMATH_CPU_KERNELS=compatible) costs against the default avx2 set,
and a fingerprint of each set's numbers to compare machines by.

    .venv/bin/python bench/cpu_kernels.py [--steps 6] [--rounds 2] [--threads 1]

The demo model's three kinds of work, each kernel set in a fresh process (the set is fixed when torch loads),
alternating round by round so that load from other processes hits both alike: warm-start steps (the demo's
tiny model, its SFT batch of 32 sequences of 150 characters, AdamW), LoRA steps on the warm-started weights
(rank 16 on every projection, as the experts train: a batch of 64 sequences of 136 tokens, AdamW) and a
sampling pass (64 completions of 96 tokens through the KV-cached loop every sampler uses). Prints the seconds
of each, their ratio (compatible / avx2), and per set a digest of each result: the weights; the first LoRA
forward's logits and gradients and the LoRA weights; the tokens drawn. Two machines whose digests agree
compute the demo's numbers alike; the digests of this project's machines are in docs/miniature.md ("The same
numbers on every machine"), where the demo's gcd and reverse experts, not its base model, came out otherwise
on a machine with AVX-512.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETS = ("avx2", "compatible")


def _digest(tensors) -> str:
    import hashlib

    return hashlib.sha256(b"".join(t.detach().contiguous().numpy().tobytes() for t in tensors)).hexdigest()[:12]


def _train(model, params: list, batch, lr: float, steps: int) -> float:
    """Seconds per step of ``steps`` AdamW steps of next-token loss on ``batch``, training ``params``."""
    import time

    import torch

    opt = torch.optim.AdamW(params, lr=lr)
    start = time.perf_counter()
    for _ in range(steps):
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad()
    return (time.perf_counter() - start) / steps


def child(steps: int, threads: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import time

    import flows  # noqa: F401  (first: it pins the kernel set named in the environment)
    import torch
    from peft import LoraConfig, get_peft_model

    from pipeline.config import load_config
    from polymath.decoding import Decoding, sample_tokens
    from training.models import build_tiny_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_config("demo")
    tiny = cfg.model.tiny
    model = build_tiny_model(tiny, vocab_size=100)
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(2, 100, (tiny.sft_batch_size, 150), generator=gen)
    train = _train(model, list(model.parameters()), batch, tiny.sft_lr, steps)
    weights = _digest(model.parameters())

    lora = cfg.train.lora
    policy = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, target_modules=list(lora.target_modules),
                                              init_lora_weights=False))  # B = 0 would hide B's gradient path
    adapter = [p for p in policy.parameters() if p.requires_grad]
    rollouts = torch.randint(2, 100, (64, 136), generator=gen)
    # where two machines' LoRA weights differ, these say whether the forward or the backward differs first
    first = policy(input_ids=rollouts, labels=rollouts)
    first.loss.backward()
    lora_logits, lora_grads = _digest([first.logits]), _digest([p.grad for p in adapter])
    for p in adapter:
        p.grad = None  # the steps below start as they would have
    lora_step = _train(policy, adapter, rollouts, cfg.train.lr, steps)
    lora_weights = _digest(adapter)

    prompts = torch.randint(2, 100, (64, 40), generator=gen)
    start = time.perf_counter()
    with torch.no_grad():
        drawn = sample_tokens(policy, prompts, torch.ones_like(prompts), Decoding(temperature=1.0, top_p=1.0, cap=96),
                              [1], torch.Generator().manual_seed(0))
    sample = time.perf_counter() - start
    tokens = _digest([torch.tensor([t for row in drawn.tokens for t in row])])
    return {"train": train, "lora": lora_step, "sample": sample,
            "weights": weights, "lora_logits": lora_logits, "lora_grads": lora_grads, "lora_weights": lora_weights,
            "tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.steps, args.threads)))
        return
    runs: dict[str, list[dict]] = {s: [] for s in SETS}
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR")}
    for _ in range(args.rounds):
        for kernel_set in SETS:
            out = subprocess.run([sys.executable, __file__, "--child", "--steps", str(args.steps), "--threads",
                                  str(args.threads)], env={**env, "POLYMATH_CPU_KERNELS": kernel_set},
                                 capture_output=True, text=True, check=True)
            runs[kernel_set].append(json.loads(out.stdout.strip().splitlines()[-1]))
    for kind, unit in (("train", "s per warm-start step"), ("lora", "s per LoRA step"),
                       ("sample", "s per sampling pass")):
        a, c = (statistics.median(r[kind] for r in runs[s]) for s in SETS)
        print(f"{kind}: avx2 {a:.3f} {unit}, compatible {c:.3f}, ratio compatible / avx2 {c / a:.2f}")
    for kind, what in (("weights", f"weights after {args.steps} warm-start steps"),
                       ("lora_logits", "logits of the first LoRA forward"), ("lora_grads", "its LoRA gradients"),
                       ("lora_weights", f"LoRA weights after {args.steps} steps"), ("tokens", "tokens drawn")):
        repeatable = all(len({r[kind] for r in runs[s]}) == 1 for s in SETS)
        listed = ", ".join(f"{s} {runs[s][0][kind]}" for s in SETS)
        print(f"{what}: {listed}{'' if repeatable else ' (NOT the same in every round)'}")

if __name__ == "__main__":
    main()
