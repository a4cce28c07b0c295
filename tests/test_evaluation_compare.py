"""Paired bootstrap comparisons: against an exhaustive bootstrap, pairing by group, and the DuckDB table."""

import itertools
import json

import numpy as np
import pandas as pd
import pytest

from evaluation.compare import comparisons, paired_bootstrap
from evaluation.store import Store


def test_paired_bootstrap_matches_the_exhaustive_bootstrap():
    diffs = np.array([0.0, 0.25, 1.0, -0.5, 0.75])
    n = len(diffs)
    # every one of the n^n equally likely resamples, exactly
    means = np.array([diffs[list(idx)].mean() for idx in itertools.product(range(n), repeat=n)])
    exact = np.percentile(means, [2.5, 97.5])
    low, high = paired_bootstrap(diffs, n_boot=200_000, seed=1)
    assert low == pytest.approx(exact[0], abs=0.02) and high == pytest.approx(exact[1], abs=0.02)
    assert paired_bootstrap(diffs, seed=3) == paired_bootstrap(diffs, seed=3)


def test_a_constant_difference_has_a_zero_width_interval():
    assert paired_bootstrap(np.full(50, 0.25)) == pytest.approx((0.25, 0.25))


def _problems(run, label, accuracies, benchmark="b"):
    return pd.DataFrame({"eval_run": run, "model_label": label, "benchmark": benchmark,
                         "problem_id": [f"p{i}" for i in range(len(accuracies))], "accuracy": accuracies})


def _run(key, model="m", data="d", config='{"k": 4, "temperature": 1.0}'):
    return {"run_key": key, "config": config, "inputs": json.dumps({"model": model, "data": data, "target": key})}


def test_runs_are_compared_with_the_base_of_their_own_group_problem_by_problem():
    rng = np.random.default_rng(0)
    base = rng.random(40).round(2)
    gain = base + 0.2
    problems = pd.concat([
        _problems("base-1", "base", base),
        _problems("expert-1", "expert:b", gain[::-1].copy()),  # listed in another order: paired by id
        _problems("base-2", "base", np.zeros(40)),  # another evaluate config: not this group's reference
        _problems("greedy", "base@greedy", np.ones(40)),
    ])
    problems.loc[problems.eval_run == "expert-1", "problem_id"] = [f"p{i}" for i in range(39, -1, -1)]
    runs = pd.DataFrame([_run("base-1", config='{"k": 8, "temperature": 1.0}'),
                         _run("expert-1", config='{"k": 4, "temperature": 1.0}'),
                         _run("base-2", config='{"k": 8, "temperature": 0.7}'),
                         _run("greedy", config='{"k": 1, "temperature": 0.0}')])
    table = comparisons(problems, runs)
    assert list(table.eval_run) == ["expert-1"]
    row = table.iloc[0]
    assert row.reference_run == "base-1" and row.n_problems == 40
    assert row["diff"] == pytest.approx(0.2) and row.ci_low == pytest.approx(0.2) and row.ci_high == pytest.approx(0.2)


def _brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Share of the k-subsets of n samples (c correct) that hold a correct one."""
    from itertools import combinations

    subsets = list(combinations([1] * c + [0] * (n - c), k))
    return sum(any(s) for s in subsets) / len(subsets)


def test_greedy_meets_greedy_and_pass_at_k_meets_pass_at_the_same_k():
    rng = np.random.default_rng(3)
    base_correct, expert_correct = rng.integers(0, 9, 30), rng.integers(0, 5, 30)
    greedy_base, greedy_expert = rng.integers(0, 2, 30).astype(float), np.ones(30)
    problems = pd.concat([
        _problems("base", "base", base_correct / 8).assign(n_samples=8, n_correct=base_correct),
        _problems("expert", "expert:b", expert_correct / 4).assign(n_samples=4, n_correct=expert_correct),
        _problems("g-base", "base@greedy", greedy_base).assign(n_samples=1, n_correct=greedy_base),
        _problems("g-expert", "expert:b@greedy", greedy_expert).assign(n_samples=1, n_correct=greedy_expert),
    ])
    greedy = '{"k": 1, "temperature": 0.0}'
    runs = pd.DataFrame([_run("base", config='{"k": 8, "temperature": 1.0}'), _run("expert"),
                         _run("g-base", config=greedy), _run("g-expert", config=greedy)])
    table = comparisons(problems, runs).set_index(["model_label", "metric"])
    assert sorted(table.index) == [("expert:b", "avg@k"), ("expert:b", "pass@4"), ("expert:b@greedy", "avg@k")]
    g = table.loc[("expert:b@greedy", "avg@k")]
    assert g.reference == "base@greedy" and g["diff"] == pytest.approx(1 - greedy_base.mean())
    p = table.loc[("expert:b", "pass@4")]
    assert p.reference == "base"
    assert p.reference_accuracy == pytest.approx(np.mean([_brute_pass_at_k(8, c, 4) for c in base_correct]))
    assert p.accuracy == pytest.approx(np.mean(expert_correct > 0))


def test_a_rerun_of_a_model_supersedes_its_earlier_run_in_the_same_group():
    problems = pd.concat([
        _problems("base-old", "base", np.zeros(10)),
        _problems("base-new", "base", np.full(10, 0.5)),
        _problems("expert-old", "expert:b", np.full(10, 0.25)),
        _problems("expert-new", "expert:b", np.ones(10)),
    ])
    runs = pd.DataFrame([_run(k) for k in ("base-old", "base-new", "expert-old", "expert-new")])
    runs["finished_at"] = pd.to_datetime(["2026-01-01", "2026-01-03", "2026-01-02", "2026-01-04"])
    table = comparisons(problems, runs)
    assert table[["eval_run", "reference_run"]].values.tolist() == [["expert-new", "base-new"]]
    assert table["diff"].iloc[0] == pytest.approx(0.5)


def test_store_refreshes_eval_comparisons(tmp_path):
    from evaluation.synthetic import synthetic_samples

    store = Store(tmp_path / "r.duckdb")
    for run, label in [("base-1", "base"), ("expert-1", "expert:x")]:
        samples = synthetic_samples(n_problems=30, k=4, benchmarks=("b1", "b2"), models=(label,), seed=len(label))
        samples["eval_run"] = run
        store.replace("eval_samples", samples, {"eval_run": run})
        row = pd.DataFrame([{**_run(run), "stage": "evaluate", "label": label, "status": "finished",
                             "started_at": pd.Timestamp("2026-01-01"), "finished_at": pd.Timestamp("2026-01-01"),
                             "seconds": 1.0, "artifact_dir": "x"}])
        store.replace("runs", row, {"stage": "evaluate", "run_key": run})
    assert store.comparisons_stale()
    assert store.refresh_comparisons() == 4  # avg@k and pass@4 per benchmark
    assert not store.comparisons_stale()
    assert sorted(store.query("SELECT DISTINCT metric FROM eval_comparisons").metric) == ["avg@k", "pass@4"]
    got = store.query("SELECT * FROM eval_comparisons WHERE metric = 'avg@k' ORDER BY benchmark")
    assert list(got.benchmark) == ["b1", "b2"] and (got.model_label == "expert:x").all()
    assert ((got.ci_low <= got["diff"]) & (got["diff"] <= got.ci_high)).all()
    acc = store.query("SELECT benchmark, model_label, avg(accuracy) a FROM eval_problems GROUP BY ALL")
    expected = acc.pivot(index="benchmark", columns="model_label", values="a")
    assert got["diff"].to_numpy() == pytest.approx((expected["expert:x"] - expected["base"]).to_numpy())
    assert store.refresh_comparisons() == 4  # idempotent


def test_merge_summary_by_hand():
    from evaluation.compare import MEAN, merge_summary

    n = 20
    # accuracy on domains x and y
    acc = {"base": (0.2, 0.2), "expert:x": (0.6, 0.1), "expert:y": (0.2, 0.5), "merged:task-arithmetic": (0.4, 0.3),
           "merged:ties": (0.5, 0.3)}
    frames, runs = [], []
    for label, values in acc.items():
        for bench, value in zip(("x", "y"), values):
            frames.append(_problems(f"e-{label}", label, np.full(n, value), bench))
        target = f"m-{label}" if label.startswith("merged") else label
        runs.append({**_run(f"e-{label}"), "inputs": json.dumps({"model": "m", "data": "d", "target": target})})
    merges = pd.DataFrame([
        {"run_key": f"m-{m}", "method": m.split(":")[1], "label": m, "scale": 1.0,
         "inputs": json.dumps({"model": "m", "expert:x": "kx"})}  # only x's expert merged: y is unseen
        for m in ("merged:task-arithmetic", "merged:ties")
    ])
    table = merge_summary(pd.concat(frames), pd.DataFrame(runs), merges).set_index(["model_label", "benchmark"])
    ties_x = table.loc[("merged:ties", "x")]
    assert ties_x.seen and ties_x.normalized == pytest.approx(0.5 / 0.6)
    assert ties_x.retained_gain == pytest.approx((0.5 - 0.2) / (0.6 - 0.2))
    assert ties_x.vs_task_arithmetic == pytest.approx(0.1) and ties_x.vs_ta_low == pytest.approx(0.1)
    ties_y = table.loc[("merged:ties", "y")]
    assert not ties_y.seen and ties_y.retained_gain == pytest.approx((0.3 - 0.2) / (0.5 - 0.2))
    mean = table.loc[("merged:ties", MEAN)]
    assert mean.retained_gain == pytest.approx(0.75) and mean.n_problems == n
    assert np.isnan(table.loc[("merged:task-arithmetic", "x")].vs_task_arithmetic)
