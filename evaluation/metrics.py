"""Evaluation metrics on the k samples of one problem, and their aggregates.

These are the definitions the SQL in ``evaluation.schema`` implements; the
tests hold the two to the same numbers. ``summarize_samples`` reproduces the
``eval_summary`` view from an ``eval_samples`` DataFrame without a database.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from evaluation.schema import PROBLEM_KEY
from polymath.errors import ConfigError, DataError

# Words are maximal runs of anything but ASCII whitespace (str.split() would
# also split on Unicode spaces, which tokenizers rarely emit between words).
_WORDS = re.compile(r"[^ \t\n\r\f\v]+")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k: 1 - C(n-c, k) / C(n, k), the chance that k of the n
    samples drawn without replacement include a correct one.

    Computed as 1 - prod_{i=n-c+1..n} (1 - k/i), which avoids huge binomials.
    """
    if not 0 <= c <= n:
        raise DataError(f"pass@k needs 0 <= c <= n, got n={n}, c={c}: count correct samples among the n stored")
    if not 1 <= k <= n:
        raise ConfigError(
            f"pass@k needs 1 <= k <= n, got k={k} with n={n} samples per problem; "
            "lower k or sample more (evaluate.k)"
        )
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def avg_at_k(correct: Sequence[bool | float]) -> float:
    """Mean correctness of the samples: the unbiased estimate of accuracy over k draws."""
    if len(correct) == 0:
        raise DataError("avg@k of a problem with no samples; every problem needs at least one sample")
    return float(np.mean(np.asarray(correct, dtype=np.float64)))


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most frequent non-None answer; a tie goes to the answer seen first."""
    counts: dict[str, int] = {}
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    if not counts:
        return None
    # dicts keep insertion order, and max() keeps the first of equal keys
    return max(counts, key=counts.__getitem__)


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int | None = None) -> bool:
    """Whether the majority-voted answer of the first k samples is correct.

    Correct means some sample carrying that answer was scored correct; with
    no extracted answer at all the vote fails.
    """
    k = len(answers) if k is None else k
    answers, correct = list(answers)[:k], list(correct)[:k]
    winner = majority_vote(answers)
    if winner is None:
        return False
    return any(bool(c) for a, c in zip(answers, correct) if a == winner)


def words(text: str | None) -> list[str]:
    """Maximal runs of non-whitespace characters (the unit of distinct-n)."""
    return _WORDS.findall(text or "")


def distinct_n(completions: Sequence[str | None], n: int = 2) -> float:
    """Unique word n-grams / total word n-grams across the completions (NaN if none)."""
    if n < 1:
        raise ConfigError(f"distinct-n needs n >= 1, got n={n}")
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in completions:
        w = words(text)
        grams = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else math.nan


def bigram_novelty(completions: Sequence[str | None]) -> list[tuple[int, int]]:
    """(n_bigrams, new_bigrams) per completion, in order: how many word bigrams
    it has and how many of those no earlier completion had.

    These are the per-sample columns the store sums for distinct-2 of any
    prefix: ``distinct_n(completions[:k], 2) == sum(new[:k]) / sum(n[:k])``.
    """
    seen: set[tuple[str, str]] = set()
    out = []
    for text in completions:
        w = words(text)
        grams = list(zip(w, w[1:]))
        new = set(grams) - seen
        seen |= new
        out.append((len(grams), len(new)))
    return out


def unique_answer_ratio(answers: Sequence[str | None]) -> float:
    """Distinct non-None answers / number of samples."""
    if len(answers) == 0:
        raise DataError("unique-answer ratio of a problem with no samples")
    return len({a for a in answers if a is not None}) / len(answers)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson correlation of the ranks, ties given their average rank.

    NaN when fewer than two pairs or either side is constant.
    """
    xs = pd.Series(np.asarray(x, dtype=np.float64))
    ys = pd.Series(np.asarray(y, dtype=np.float64))
    if len(xs) != len(ys):
        raise DataError(f"spearman needs paired values, got {len(xs)} and {len(ys)}")
    keep = xs.notna() & ys.notna()
    xs, ys = xs[keep], ys[keep]
    if len(xs) < 2 or xs.nunique() < 2 or ys.nunique() < 2:
        return math.nan
    return float(xs.rank(method="average").corr(ys.rank(method="average")))


def k_ladder(n: int) -> list[int]:
    """The k values reported for n samples: 1, 2, 4, ... below n, then n."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def problem_stats(samples: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-problem rows (like ``eval_problems``) and per-problem-and-k rows
    (like ``eval_problems_at_k``) from ``eval_samples`` rows."""
    per_problem, per_k = [], []
    for key, group in samples.sort_values("sample_idx").groupby(list(PROBLEM_KEY), sort=True):
        answers = [None if pd.isna(a) else a for a in group["extracted_answer"]]
        correct = [bool(c) for c in group["correct"]]
        texts = [None if pd.isna(t) else t for t in group["completion"]]
        n, c = len(group), sum(correct)
        entropy = group["mean_entropy"].astype(float)
        per_problem.append(
            (*key, n, c, c / n, float(entropy.mean()) if entropy.notna().any() else math.nan,
             float(group["n_tokens"].astype(float).mean()),
             float(group["no_answer"].fillna(False).astype(float).mean()),
             float(group["hit_cap"].fillna(False).astype(float).mean()))
        )
        for k in k_ladder(n):
            per_k.append(
                (*key, k, pass_at_k(n, c, k), maj_at_k(answers, correct, k),
                 distinct_n(texts[:k], 2), unique_answer_ratio(answers[:k]))
            )
    p = pd.DataFrame(
        per_problem,
        columns=[*PROBLEM_KEY, "n_samples", "n_correct", "accuracy", "mean_entropy", "mean_tokens", "no_answer_rate",
                 "hit_cap_rate"],
    )
    a = pd.DataFrame(
        per_k, columns=[*PROBLEM_KEY, "k", "pass_at_k", "maj_correct", "distinct_2", "unique_answer_ratio"]
    )
    return p, a


def summarize_samples(samples: pd.DataFrame) -> pd.DataFrame:
    """What the ``eval_summary`` view reports, computed in pandas."""
    p, a = problem_stats(samples)
    joined = a.merge(p, on=list(PROBLEM_KEY))
    joined["maj_correct"] = joined["maj_correct"].astype(float)
    group = joined.groupby(["eval_run", "model_label", "benchmark", "k"], sort=True)
    out = group.agg(
        n_problems=("problem_id", "size"),
        n_samples=("n_samples", "sum"),
        avg_at_k=("accuracy", "mean"),
        pass_at_k=("pass_at_k", "mean"),
        maj_at_k=("maj_correct", "mean"),
        mean_entropy=("mean_entropy", "mean"),
        distinct_2=("distinct_2", "mean"),
        unique_answer_ratio=("unique_answer_ratio", "mean"),
        mean_tokens=("mean_tokens", "mean"),
        no_answer_rate=("no_answer_rate", "mean"),
        hit_cap_rate=("hit_cap_rate", "mean"),
    )
    return out.reset_index()


def entropy_accuracy_correlation(samples: pd.DataFrame) -> pd.DataFrame:
    """What the ``entropy_vs_accuracy`` view reports, computed in pandas."""
    p, _ = problem_stats(samples)
    p = p[p["mean_entropy"].notna()]
    rows = []
    for key, g in p.groupby(["eval_run", "model_label", "benchmark"], sort=True):
        rows.append(
            (*key, len(g), spearman(g["mean_entropy"], g["accuracy"]),
             float(g["mean_entropy"].mean()), float(g["accuracy"].mean()))
        )
    return pd.DataFrame(
        rows, columns=["eval_run", "model_label", "benchmark", "n_problems", "spearman", "mean_entropy", "accuracy"]
    )
