"""Synthetic eval_samples rows, for the store benchmark and for checking the SQL
against the Python metrics on data with every awkward case in it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from evaluation.metrics import bigram_novelty
from evaluation.schema import TABLES

VOCAB = np.array(
    "the a of to is and so we add 1 2 3 4 5 6 7 8 9 0 = + - * answer step then total sum "
    "x y first next thus check carry result value left right".split()
)


def synthetic_samples(
    n_problems: int,
    k: int,
    *,
    models: tuple[str, ...] = ("base",),
    benchmarks: tuple[str, ...] = ("arith",),
    eval_run: str = "synthetic",
    seed: int = 0,
    ragged: bool = False,
    awkward: bool = False,
) -> pd.DataFrame:
    """Rows for ``n_problems`` problems of every (model, benchmark), k samples each.

    ``ragged`` gives some problems fewer than k samples. ``awkward`` adds what
    real data has: rows out of order, missing completions and answers,
    missing entropies, tied entropies and odd whitespace.
    """
    rng = np.random.default_rng(seed)
    vocab = VOCAB[:8] if awkward else VOCAB
    frames = []
    for model in models:
        for benchmark in benchmarks:
            n = np.full(n_problems, k)
            if ragged:
                n = rng.integers(1, k + 1, size=n_problems)
            problem = np.repeat(np.arange(n_problems), n)
            sample_idx = np.concatenate([np.arange(m) for m in n]).astype(np.int32)
            rows = len(problem)
            lengths = rng.integers(0 if awkward else 4, 21, size=rows)
            tokens = vocab[rng.integers(0, len(vocab), size=(rows, 20))]
            sep = [" ", " ", "\t", "\n  "] if awkward else [" "]
            completion = [
                (sep[int(rng.integers(len(sep)))]).join(row[:m]) for row, m in zip(tokens.tolist(), lengths.tolist())
            ]
            if awkward:
                completion = [None if rng.random() < 0.05 else c for c in completion]
            starts = np.concatenate([[0], np.cumsum(n)[:-1]])
            novelty = [nb for s, m in zip(starts, n) for nb in bigram_novelty(completion[s : s + m])]
            n_bigrams, new_bigrams = (np.array(col, dtype=np.int32) for col in zip(*novelty))
            answer_id = rng.integers(0, 5, size=rows)
            answers = np.array(["0", "1", "2", "3", None], dtype=object)[answer_id]
            # per-problem difficulty, so accuracy varies between problems
            target = rng.integers(0, 4, size=n_problems)[problem]
            correct = answer_id == target
            entropy = rng.gamma(2.0, 0.4, size=rows)
            if awkward:
                entropy = np.round(entropy, 1)
                entropy[rng.random(rows) < 0.05] = np.nan
            frames.append(
                pd.DataFrame(
                    {
                        "eval_run": eval_run,
                        "model_label": model,
                        "benchmark": benchmark,
                        "problem_id": [f"p{p:07d}" for p in problem.tolist()],
                        "sample_idx": sample_idx,
                        "completion": completion,
                        "extracted_answer": answers,
                        "score": correct.astype(np.float64),
                        "correct": correct,
                        "n_tokens": (lengths * 2 + 1).astype(np.int32),
                        "no_answer": pd.isna(answers),
                        "hit_cap": lengths == 20,
                        "mean_entropy": entropy,
                        "sum_logprob": -rng.gamma(5.0, 3.0, size=rows),
                        "n_bigrams": n_bigrams,
                        "new_bigrams": new_bigrams,
                    }
                )
            )
    df = pd.concat(frames, ignore_index=True)[TABLES["eval_samples"].column_names]
    if awkward:
        df = df.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    return df
