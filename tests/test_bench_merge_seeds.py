"""The merge ranking benchmark's statistics: paired differences from task arithmetic, seeds x problems intervals."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import merge_seeds  # noqa: E402


def _problems(effect: float, seed_spread: float, n_seeds: int = 3, n_problems: int = 200) -> pd.DataFrame:
    """Task arithmetic and one merge (all experts, and without gcd) on two domains; the merge is ``effect``
    better on average, each seed's effect moved by up to ``seed_spread``."""
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(n_seeds):
        shift = effect + seed_spread * (seed - (n_seeds - 1) / 2)
        for suffix in ("", "-without-gcd"):
            for benchmark in ("arithmetic", "gcd"):
                base = rng.uniform(0.2, 0.8, n_problems)
                mine = np.clip(base + shift + rng.normal(0, 0.05, n_problems), 0, 1.5)
                for label, acc in (("merged:task-arithmetic", base), ("merged:ties", mine)):
                    rows += [{"model_label": label + suffix, "benchmark": benchmark, "problem_id": f"p{i}",
                              "accuracy": a, "seed": seed} for i, a in enumerate(acc)]
    return pd.DataFrame(rows)


def test_differences_pair_each_merge_with_task_arithmetic_of_the_same_experts():
    diffs = merge_seeds.differences(_problems(0.1, 0.0))
    assert set(diffs.model_label) == {"merged:ties", "merged:ties-without-gcd"}
    unseen = diffs[~diffs.seen]
    assert set(unseen.model_label) == {"merged:ties-without-gcd"} and set(unseen.benchmark) == {"gcd"}
    assert abs(diffs["diff"].mean() - 0.1) < 0.01


def test_a_real_effect_is_a_verdict_and_a_seed_dependent_one_is_level():
    clear = merge_seeds.ranking(merge_seeds.differences(_problems(0.05, 0.0)))
    assert set(clear.verdict) == {"beats"}
    # the same mean effect, but one seed at -5 points and one at +15: three seeds cannot call it
    spread = merge_seeds.ranking(merge_seeds.differences(_problems(0.05, 0.10)))
    assert set(spread.verdict) == {"level"}
    none = merge_seeds.ranking(merge_seeds.differences(_problems(0.0, 0.0)))
    assert set(none.verdict) == {"level"}
