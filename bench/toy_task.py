"""The benchmarks' toy task: a tiny random Qwen2 with a character tokenizer, sum questions padded with
distractor text, and a dense reward a random model can climb (bench/train.py, bench/gpu_check.py)."""

from __future__ import annotations

import os
import random
import string
import sys
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
