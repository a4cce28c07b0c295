"""Paired comparisons between evaluated models, with bootstrap intervals over problems.

Two evaluation runs are comparable when they sampled the same problems from the
same base model and data with the same evaluation settings: the same
``(model, data)`` inputs and the same evaluate config, hence the same problems
in the same order. The number of samples per problem (``k``) may differ: the
per-problem accuracy ``c / n`` estimates the same quantity for any ``n``, so a
base model sampled at a larger k (for its pass@k) still pairs with its experts. Within such a group every run is compared with each
reference label present (``base`` by default): per benchmark, the difference of
per-problem accuracy (``c / n``), its mean, and the percentile interval of that
mean over ``n_boot`` resamples of the problems with replacement (paired: both
models' accuracies on a resampled problem travel together). The resampling is
seeded, so the same rows give the same interval.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

N_BOOT = 2000
SEED = 0
REFERENCES = ("base",)

COLUMNS = [
    "eval_run", "model_label", "benchmark", "reference", "reference_run", "n_problems",
    "accuracy", "reference_accuracy", "diff", "ci_low", "ci_high",
]


def paired_bootstrap(diffs: np.ndarray, n_boot: int = N_BOOT, seed: int = SEED, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of ``diffs`` (one paired difference per problem)."""
    diffs = np.asarray(diffs, dtype=np.float64)
    if diffs.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, diffs.size, size=(n_boot, diffs.size))
    means = diffs[idx].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def comparison_groups(runs: pd.DataFrame) -> dict[str, str]:
    """eval_run -> group key, for ``runs`` rows of the evaluate stage (columns run_key, config, inputs)."""
    groups = {}
    for row in runs.itertuples(index=False):
        inputs = json.loads(row.inputs) if isinstance(row.inputs, str) and row.inputs else {}
        config = json.loads(row.config) if isinstance(row.config, str) and row.config else {}
        if isinstance(config, dict):
            config.pop("k", None)
        key = {"model": inputs.get("model"), "data": inputs.get("data"), "config": config}
        groups[row.run_key] = json.dumps(key, sort_keys=True)
    return groups


def comparisons(problems: pd.DataFrame, runs: pd.DataFrame, references: tuple[str, ...] = REFERENCES,
                n_boot: int = N_BOOT, seed: int = SEED) -> pd.DataFrame:
    """Every run against each reference of its group, per benchmark.

    ``problems``: eval_problems rows (eval_run, model_label, benchmark, problem_id, accuracy);
    ``runs``: evaluate-stage runs rows (run_key, config, inputs).
    """
    groups = comparison_groups(runs)
    problems = problems[problems.eval_run.isin(groups)].assign(group=lambda f: f.eval_run.map(groups))
    rows = []
    for _, members in problems.groupby("group", sort=True):
        models = members[["eval_run", "model_label"]].drop_duplicates().sort_values(["eval_run", "model_label"])
        for reference in references:
            ref_models = models[models.model_label == reference]
            if ref_models.empty:
                continue
            ref_run = ref_models.eval_run.iloc[0]
            ref = members[(members.eval_run == ref_run) & (members.model_label == reference)]
            ref = ref.set_index(["benchmark", "problem_id"])["accuracy"]
            for run, label in models.itertuples(index=False):
                if label == reference:
                    continue
                mine = members[(members.eval_run == run) & (members.model_label == label)]
                for benchmark, part in mine.groupby("benchmark", sort=True):
                    paired = ref.reindex(list(zip(part.benchmark, part.problem_id)))
                    ok = paired.notna().to_numpy()
                    if not ok.any():
                        continue
                    a = part.accuracy.to_numpy()[ok]
                    b = paired.to_numpy()[ok]
                    low, high = paired_bootstrap(a - b, n_boot, seed)
                    rows.append((run, label, benchmark, reference, ref_run, int(ok.sum()),
                                 float(a.mean()), float(b.mean()), float((a - b).mean()), low, high))
    return pd.DataFrame(rows, columns=COLUMNS)
