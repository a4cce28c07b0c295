"""A few GRPO steps of train_expert on CUDA in bf16: step times and peak GPU memory.

    python bench/gpu_train_check.py                      # tiny random Qwen2 + character tokenizer
    python bench/gpu_train_check.py --model-dir PATH     # any local causal LM folder
    python bench/gpu_train_check.py --entropy none --steps 8

Runs the full polymath path (PolymathGRPOTrainer: TRL generation, our loss with
AER entropy bonus and staged PAR by default) so the entropy gradient goes
through TRL's fused log-prob/entropy kernel on the GPU. Exits 0 with a message
when CUDA is absent. Also the source of the tiny model and toy task that
bench/train.py uses.
"""

from __future__ import annotations

import argparse
import os
import random
import string
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# First on the path: an installed module of the same name (e.g. "curation") must not shadow the repo's packages.
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DIGITS = set("0123456789")


def build_tiny_model(path: Path, hidden: int = 128, layers: int = 4, seed: int = 0) -> Path:
    """Save a random Qwen2 (about 1M parameters at hidden=128, layers=4) and a character tokenizer over printable
    ASCII, built as the demo builds its model."""
    from training.models import TinyModelConfig, build_char_tokenizer, build_tiny_model as build

    tokenizer = build_char_tokenizer([string.printable])
    cfg = TinyModelConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_layers=layers, max_positions=1024,
                          seed=seed)
    build(cfg, len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def toy_problems(n: int = 64, prompt_chars: int = 200, seed: int = 0):
    """Sum questions padded with distractor text to about ``prompt_chars`` characters."""
    from polymath.records import Problem

    rng = random.Random(seed)
    problems = []
    for i in range(n):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        filler = " ".join(rng.choice(["note", "the", "sum", "of", "two", "numbers", "is", "asked"]) for _ in range(prompt_chars // 4))
        question = f"{filler[: max(0, prompt_chars - 30)]}. What is {a} + {b}?"
        problems.append(Problem(id=f"sum-{i}", domain="toy", prompt=question, answer=str(a + b)))
    return problems


def toy_reward(problem, completion: str) -> float:
    """1 for the exact answer first; otherwise half the share of digits (a dense signal for a random model)."""
    text = completion.strip()
    if text.split("\n")[0].strip() == problem.answer:
        return 1.0
    return 0.5 * sum(ch in DIGITS for ch in text) / max(len(text), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="local HF causal LM folder; default: build a tiny one")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--prompt-chars", type=int, default=300)
    parser.add_argument("--hidden", type=int, default=256, help="tiny model width (ignored with --model-dir)")
    parser.add_argument("--layers", type=int, default=4, help="tiny model depth (ignored with --model-dir)")
    parser.add_argument("--entropy", default="aer", choices=["none", "fixed", "adaptive", "aer"])
    parser.add_argument("--fp32", action="store_true", help="train in float32 instead of bf16")
    args = parser.parse_args(argv)

    try:
        import torch
    except ImportError:
        print("gpu_train_check: torch is not installed; nothing to check")
        return 0
    if not torch.cuda.is_available():
        print("gpu_train_check: CUDA is not available on this machine; skipped (run it on a GPU host)")
        return 0

    from training.config import TrainConfig
    from training.expert import train_expert

    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory(prefix="polymath-gpu-check-") as tmp:
        tmp = Path(tmp)
        model_dir = args.model_dir or build_tiny_model(tmp / "model", hidden=args.hidden, layers=args.layers)
        config = TrainConfig(
            steps=args.steps,
            lr=1e-3,
            prompts_per_step=args.prompts_per_step,
            num_generations=args.num_generations,
            max_new_tokens=args.max_new_tokens,
            bf16=not args.fp32,
            entropy={"mode": args.entropy, "coef": 0.01, "delta": 0.001, "c_max": 0.05, "target": 10.0},
            par={"schedule": "staged", "staged_fraction": 0.3},
        )
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        result = train_expert(model_dir, toy_problems(256, args.prompt_chars), toy_reward, config, tmp / "out", "gpu")
        wall = time.perf_counter() - started
        peak = torch.cuda.max_memory_allocated()
        wide = result.steps.pivot(index="step", columns="metric", values="value")
        print(f"model: {model_dir if args.model_dir else f'tiny Qwen2 hidden={args.hidden} layers={args.layers}'}")
        print(f"batch: {args.prompts_per_step} prompts x {args.num_generations} completions, "
              f"<= {args.max_new_tokens} new tokens, {'fp32' if args.fp32 else 'bf16'}, entropy={args.entropy}")
        header = ("step", "step_time_s", "reward", "entropy", "coef", "lambda", "len", "grad_norm")
        print("{:>4} {:>11} {:>7} {:>8} {:>7} {:>6} {:>6} {:>9}".format(*header))
        for step, row in wide.iterrows():
            print(
                f"{step:>4} {row['step_time']:>11.3f} {row['reward']:>7.3f} {row['entropy']:>8.3f} "
                f"{row['entropy_coef']:>7.4f} {row['par_lambda']:>6.2f} {row['response_length']:>6.1f} "
                f"{row['grad_norm']:>9.4f}"
            )
        steady = wide["step_time"].iloc[1:] if len(wide) > 1 else wide["step_time"]
        print(f"median step time (after step 1): {steady.median():.3f} s; whole call {wall:.1f} s")
        print(f"torch.cuda.max_memory_allocated: {peak / 2**20:.1f} MiB")
        print(f"initial entropy {result.initial_entropy:.3f} nats; adapter at {result.adapter_dir.name}/ "
              f"({sorted(p.name for p in result.adapter_dir.iterdir())})")
        finite = wide.drop(columns=["entropy_target"]).notna().all().all()
        print("all step metrics finite:", bool(finite))
        return 0 if finite else 1


if __name__ == "__main__":
    sys.exit(main())
