"""Teacher-forced entropy on fixed contexts: the model's next-token entropy along each problem's reference
solution, the same tokens for every model.

The entropy of a model's own samples moves with what it samples (a shorter chain has fewer uncertain
steps), so it cannot tell a sharper policy from one that writes other chains. Reading the reference solution
of every held-out problem, token by token, gives every model the same contexts; the entropy at each position
is split by what the position holds, digits or other characters, since RL on answers sharpens the numbers
first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import torch

from evaluation.config import EvalConfig
from polymath.loading import LoadOptions
from polymath.prompting import format_prompt
from polymath.records import Problem

KINDS = ("digit", "other")
COLUMNS = ["eval_run", "model_label", "benchmark", "problem_id", "kind", "tokens", "entropy"]


def token_kinds(tokenizer, ids: Sequence[int]) -> list[str]:
    """'digit' for a token whose text is digits only (after stripping spaces), else 'other'."""
    kinds = []
    for i in ids:
        text = tokenizer.decode([i]).strip()
        kinds.append("digit" if text and text.isdigit() else "other")
    return kinds


@torch.inference_mode()
def reference_entropy(model, tokenizer, problems_by_benchmark: Mapping[str, Sequence[Problem]], model_label: str,
                      eval_run: str, batch_size: int = 8) -> pd.DataFrame:
    """Per problem with a reference solution and kind of position: the mean entropy (nats) of the model's
    next-token distribution over the solution's tokens, and how many tokens it is over."""
    was_training = model.training
    model.eval()
    device = model.device
    rows = []
    try:
        for benchmark, problems in problems_by_benchmark.items():
            solved = [p for p in problems if p.solution]
            for start in range(0, len(solved), batch_size):
                batch = solved[start : start + batch_size]
                prompts = [tokenizer(format_prompt(p, tokenizer), add_special_tokens=False)["input_ids"] for p in batch]
                targets = [tokenizer(p.solution, add_special_tokens=False)["input_ids"] for p in batch]
                width = max(len(a) + len(b) for a, b in zip(prompts, targets))
                pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, (a, b) in enumerate(zip(prompts, targets)):
                    ids[row, : len(a) + len(b)] = torch.tensor(a + b)
                    mask[row, : len(a) + len(b)] = 1
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
                logp = torch.log_softmax(logits, dim=-1)
                entropy = -(logp.exp() * logp).sum(-1).cpu()
                for row, (problem, a, b) in enumerate(zip(batch, prompts, targets)):
                    # position t predicts token t + 1: the solution's tokens are predicted from len(a) - 1 on
                    per_token = entropy[row, len(a) - 1 : len(a) - 1 + len(b)]
                    kinds = token_kinds(tokenizer, b)
                    for kind in KINDS:
                        picked = [float(h) for h, k in zip(per_token, kinds) if k == kind]
                        if picked:
                            rows.append((eval_run, model_label, benchmark, problem.id, kind, len(picked),
                                         sum(picked) / len(picked)))
    finally:
        model.train(was_training)
    return pd.DataFrame(rows, columns=COLUMNS).astype({"tokens": "int32", "entropy": "float64"})


def measure_reference_entropy(
    model_path: Path | str,
    problems_by_benchmark: Mapping[str, Sequence[Problem]],
    config: EvalConfig,
    model_label: str,
    eval_run: str,
    *,
    adapter_dir: Path | str | None = None,
    load: LoadOptions | None = None,
) -> pd.DataFrame:
    """The model's teacher-forced entropy on the reference solutions of the problems ``evaluate_model`` samples
    (the same selection): eval_reference_entropy rows. Runs on transformers whatever the sampling backend."""
    from evaluation.sampling import hf_model, select_problems

    selected = {b: select_problems(b, ps, config.max_problems_per_benchmark) for b, ps in problems_by_benchmark.items()}
    model, tokenizer = hf_model(str(model_path), None, adapter_dir, load)
    return reference_entropy(model, tokenizer, selected, model_label, eval_run, batch_size=config.batch_size)
