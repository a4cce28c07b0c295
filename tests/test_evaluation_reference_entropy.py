"""Teacher-forced entropy along reference solutions, against a one-problem-at-a-time dense computation."""

from __future__ import annotations

import pytest
import torch

from evaluation.reference_entropy import reference_entropy, token_kinds
from polymath.prompting import format_prompt
from polymath.records import Problem

from .sampling_model import model, tokenizer  # noqa: F401  (fixtures)

SOLVED = [
    Problem("g0", "gcd", "12 18?", "6", solution="18 = 1 x 12 + 6\n12 = 2 x 6\nanswer 6"),
    Problem("g1", "gcd", "7 21?", "7", solution="21 = 3 x 7\nanswer 7"),
    Problem("g2", "gcd", "4 9?", "1", solution=None),  # no reference solution: no rows
]


def _dense(model, tokenizer, problem: Problem) -> dict[str, list[float]]:
    prompt = tokenizer(format_prompt(problem, tokenizer), add_special_tokens=False)["input_ids"]
    target = tokenizer(problem.solution, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + target])).logits[0]
    out: dict[str, list[float]] = {"digit": [], "other": []}
    for i, token in enumerate(target):
        p = torch.softmax(logits[len(prompt) - 1 + i].double(), -1)
        kind = "digit" if tokenizer.decode([token]).strip().isdigit() else "other"
        out[kind].append(float(-(p * p.log()).sum()))
    return out


def test_batched_entropy_matches_each_problem_alone(model, tokenizer):
    frame = reference_entropy(model, tokenizer, {"gcd": SOLVED}, "m", "run", batch_size=2)
    assert sorted(frame.problem_id.unique()) == ["g0", "g1"]
    for problem in SOLVED[:2]:
        dense = _dense(model, tokenizer, problem)
        for kind, values in dense.items():
            row = frame[(frame.problem_id == problem.id) & (frame.kind == kind)].iloc[0]
            assert row.tokens == len(values)
            assert row.entropy == pytest.approx(sum(values) / len(values), rel=1e-5)
    # the same contexts whatever the batch: padding does not leak into the positions read
    alone = reference_entropy(model, tokenizer, {"gcd": SOLVED}, "m", "run", batch_size=1)
    assert alone.entropy.tolist() == pytest.approx(frame.entropy.tolist(), rel=1e-5)


def test_positions_are_split_into_digits_and_other_characters(tokenizer):
    ids = tokenizer("a1 2\n", add_special_tokens=False)["input_ids"]
    assert token_kinds(tokenizer, ids) == ["other", "digit", "other", "digit", "other"]
