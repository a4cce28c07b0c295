"""Metrics against brute force and hand-made samples; the SQL views against the metrics."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from evaluation import metrics
from evaluation.sampling import samples_frame
from evaluation.store import Store
from evaluation.synthetic import synthetic_samples
from polymath.errors import ConfigError, DataError


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_is_the_chance_a_k_subset_holds_a_correct_sample(n: int):
    for c in range(n + 1):
        correct = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(correct, k))
            brute = sum(any(s) for s in subsets) / len(subsets)
            assert metrics.pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)


def test_pass_at_k_matches_the_binomial_form_for_large_n():
    n, c, k = 200, 7, 50
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert metrics.pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-12)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ConfigError, match="lower k"):
        metrics.pass_at_k(4, 1, 5)
    with pytest.raises(DataError, match="c <= n"):
        metrics.pass_at_k(4, 5, 1)


def test_the_sql_pass_at_k_macro_matches_python(tmp_path: Path):
    store = Store(tmp_path / "polymath.duckdb")
    store.ensure_schema()
    cases = [(n, c, k) for n in (1, 2, 5, 16, 64, 1000) for c in sorted({0, 1, n // 3, n - 1, n}) if c >= 0
             for k in sorted({1, 2, n // 2, n - 1, n}) if 1 <= k <= n]
    got = store.query("SELECT n, c, k, pass_at_k(n, c, k) AS p FROM (VALUES " +
                      ", ".join(f"({n}, {c}, {k})" for n, c, k in cases) + ") t(n, c, k)")
    for row in got.itertuples():
        assert row.p == pytest.approx(metrics.pass_at_k(row.n, row.c, row.k), abs=1e-10)
    assert store.query("SELECT pass_at_k(4, 1, 5) AS p")["p"].isna().all()


def test_avg_at_k():
    assert metrics.avg_at_k([True, False, False, True]) == 0.5
    assert metrics.avg_at_k([1.0]) == 1.0
    with pytest.raises(DataError):
        metrics.avg_at_k([])


def test_majority_vote_and_maj_at_k():
    assert metrics.majority_vote(["3", "4", "4", None, None, None]) == "4"  # None never wins
    assert metrics.majority_vote(["5", "4", "4", "5"]) == "5"  # a tie goes to the first seen
    assert metrics.majority_vote([None, None]) is None
    answers = ["7", "8", "8", "7", "7"]
    correct = [True, False, False, True, True]
    assert metrics.maj_at_k(answers, correct) is True
    assert metrics.maj_at_k(answers, correct, k=3) is False
    assert metrics.maj_at_k(answers, correct, k=1) is True
    assert metrics.maj_at_k([None, None], [False, False]) is False
    # a voted answer counts as correct when a sample carrying it was scored correct
    assert metrics.maj_at_k(["x", "x", "y"], [False, True, True]) is True


def test_words_split_on_ascii_whitespace_only():
    assert metrics.words(" a\tb\n\nc\x0bd\x0ce\r f ") == ["a", "b", "c", "d", "e", "f"]
    assert metrics.words("x\u00a0y") == ["x\u00a0y"]
    assert metrics.words(None) == [] and metrics.words("") == []


def test_distinct_n_by_hand():
    texts = ["a b c", "a b d", "x", ""]
    assert metrics.distinct_n(texts, 1) == pytest.approx(5 / 7)  # a b c d x of a b c a b d x
    assert metrics.distinct_n(texts, 2) == pytest.approx(3 / 4)  # ab bc ab bd
    assert metrics.distinct_n(texts, 3) == pytest.approx(2 / 2)
    assert math.isnan(metrics.distinct_n(["one", None], 2))
    with pytest.raises(ConfigError):
        metrics.distinct_n(texts, 0)


def test_bigram_novelty_sums_to_distinct_2_of_every_prefix():
    rng = np.random.default_rng(1)
    for _ in range(50):
        texts = [" ".join(rng.choice(list("abc"), size=rng.integers(0, 7))) for _ in range(rng.integers(1, 9))]
        novelty = metrics.bigram_novelty(texts)
        for k in range(1, len(texts) + 1):
            total = sum(n for n, _ in novelty[:k])
            new = sum(m for _, m in novelty[:k])
            expected = metrics.distinct_n(texts[:k], 2)
            if total == 0:
                assert math.isnan(expected)
            else:
                assert new / total == pytest.approx(expected)


def test_unique_answer_ratio():
    assert metrics.unique_answer_ratio(["1", "1", "2", None]) == 0.5
    assert metrics.unique_answer_ratio([None, None]) == 0.0
    with pytest.raises(DataError):
        metrics.unique_answer_ratio([])


def test_spearman_against_scipy_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.integers(0, 5, size=30).astype(float)
        y = x + rng.integers(0, 3, size=30)
        assert metrics.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert metrics.spearman([0.5, 2.0, 1.0], [0.5, 0.0, 1.0]) == pytest.approx(-0.5)
    assert math.isnan(metrics.spearman([1, 1, 1], [1, 2, 3]))
    assert math.isnan(metrics.spearman([1], [2]))


def test_k_ladder():
    assert metrics.k_ladder(1) == [1]
    assert metrics.k_ladder(8) == [1, 2, 4, 8]
    assert metrics.k_ladder(6) == [1, 2, 4, 6]


def _hand_rows() -> pd.DataFrame:
    """Three problems with results worked out by hand below."""
    spec = {
        # problem: (answers, correct, completions, entropy per sample)
        "A": (["1", "1", "2", None], [True, True, False, False], ["a b c", "a b d", "x", ""], 0.5),
        "B": ([None] * 4, [False] * 4, ["q q q", "q q", "", None], 2.0),
        "C": (["9", "9", "9", "9"], [True] * 4, ["z y", "z y", "z y", "z y"], 1.0),
    }
    rows = []
    for pid, (answers, correct, texts, entropy) in spec.items():
        novelty = metrics.bigram_novelty(texts)
        for i in range(4):
            rows.append(("run", "base", "toy", pid, i, texts[i], answers[i], float(correct[i]), correct[i],
                         3, answers[i] is None, False, entropy, -1.0, *novelty[i]))
    return samples_frame(rows)


@pytest.fixture
def hand_store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "polymath.duckdb")
    store.ensure_schema()
    store.replace("eval_samples", _hand_rows(), {"eval_run": "run"})
    return store


def test_views_on_hand_made_rows(hand_store: Store):
    got = hand_store.query("SELECT * FROM eval_summary ORDER BY k").set_index("k")
    assert got.index.tolist() == [1, 2, 4]
    assert got["n_problems"].tolist() == [3, 3, 3]
    assert got["avg_at_k"].tolist() == pytest.approx([0.5, 0.5, 0.5])  # (2/4 + 0 + 1) / 3
    # A: c=2 of 4 -> pass@1 1/2, pass@2 1 - C(2,2)/C(4,2) = 5/6; B: 0; C: 1
    assert got["pass_at_k"].tolist() == pytest.approx([(0.5 + 1) / 3, (5 / 6 + 1) / 3, 2 / 3])
    # A votes "1" (right) at every k; B has no answer; C votes "9" (right)
    assert got["maj_at_k"].tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3])
    # unique answers / k: A 1/1, 1/2, 2/4; B 0; C 1/1, 1/2, 1/4
    assert got["unique_answer_ratio"].tolist() == pytest.approx([2 / 3, 1 / 3, 0.75 / 3])
    # distinct-2: A 2/2, 3/4, 3/4; B 1/2, 1/3, 1/3; C 1/1, 1/2, 1/4
    assert got["distinct_2"].tolist() == pytest.approx(
        [(1 + 0.5 + 1) / 3, (0.75 + 1 / 3 + 0.5) / 3, (0.75 + 1 / 3 + 0.25) / 3]
    )
    assert got["mean_entropy"].tolist() == pytest.approx([3.5 / 3] * 3)
    corr = hand_store.query("SELECT * FROM entropy_vs_accuracy")
    assert corr["spearman"].iloc[0] == pytest.approx(-0.5)  # worked out in test_spearman_against_scipy
    assert corr["n_problems"].iloc[0] == 3


def test_views_agree_with_the_python_metrics(tmp_path: Path):
    df = synthetic_samples(40, 8, models=("base", "merged:ties"), benchmarks=("arith", "logic"),
                           ragged=True, awkward=True, seed=3)
    store = Store(tmp_path / "polymath.duckdb")
    store.ensure_schema()
    for model, part in df.groupby("model_label"):
        store.replace("eval_samples", part, {"eval_run": "synthetic", "model_label": model})

    sql = store.query("SELECT * FROM eval_summary ORDER BY eval_run, model_label, benchmark, k")
    py = metrics.summarize_samples(df)
    assert len(sql) == len(py) > 0
    pd.testing.assert_frame_equal(sql, py, check_dtype=False, atol=1e-12, rtol=1e-9)

    per_problem, per_k = metrics.problem_stats(df)
    stored = store.query("SELECT * FROM eval_problems_at_k ORDER BY eval_run, model_label, benchmark, problem_id, k")
    pd.testing.assert_frame_equal(stored, per_k, check_dtype=False, atol=1e-12)
    stored = store.query("SELECT * FROM eval_problems ORDER BY eval_run, model_label, benchmark, problem_id")
    pd.testing.assert_frame_equal(stored, per_problem, check_dtype=False, atol=1e-12)

    sql_corr = store.query("SELECT * FROM entropy_vs_accuracy ORDER BY ALL")
    py_corr = metrics.entropy_accuracy_correlation(df)
    pd.testing.assert_frame_equal(sql_corr.drop(columns="spearman"), py_corr.drop(columns="spearman"),
                                  check_dtype=False, atol=1e-12)
    # Rank ties are exact equalities, and a mean of the same entropies summed in
    # another order can differ in the last bit; so the view's Spearman is held
    # to the Python one on the per-problem values the store computed.
    for row in sql_corr.itertuples():
        g = stored[(stored.model_label == row.model_label) & (stored.benchmark == row.benchmark)]
        g = g[g.mean_entropy.notna()]
        assert g.mean_entropy.duplicated().any()  # ties are exercised
        assert row.spearman == pytest.approx(metrics.spearman(g.mean_entropy, g.accuracy), abs=1e-12)
        assert row.spearman == pytest.approx(stats.spearmanr(g.mean_entropy, g.accuracy).statistic, abs=1e-12)
