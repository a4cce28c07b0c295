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
seeded, so the same rows give the same interval. When a group holds several runs of one
model label (a rerun after a code change), only the latest takes part.

Two metrics are compared (the ``metric`` column): ``avg@k``, the per-problem accuracy, and ``pass@k`` at the
smaller of the two runs' sample counts (the unbiased estimator 1 - C(n-c, k) / C(n, k) per problem, so a
base sampled 8 times and an expert sampled 4 times meet at pass@4). Greedy runs (temperature 0, one sample)
form groups of their own, compared with ``base@greedy``: together, greedy against greedy and pass@k against
pass@k at one k tell what RL taught from what sharpening the sampling distribution alone gives.
"""

from __future__ import annotations

import json
from math import comb

import numpy as np
import pandas as pd

N_BOOT = 2000
SEED = 0
REFERENCES = ("base", "base@greedy")
AVG = "avg@k"

COLUMNS = [
    "eval_run", "model_label", "benchmark", "reference", "reference_run", "metric", "n_problems",
    "accuracy", "reference_accuracy", "diff", "ci_low", "ci_high",
]


def pass_at_k(n: np.ndarray, c: np.ndarray, k: int) -> np.ndarray:
    """Unbiased pass@k per problem from ``n`` samples with ``c`` correct (n >= k)."""
    return np.array([1.0 - comb(int(ni) - int(ci), k) / comb(int(ni), k) for ni, ci in zip(n, c)])


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


def grouped_latest(problems: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """``problems`` of evaluate runs, with their ``group``, keeping in each group only the latest run of each
    model label: a rerun after a code change supersedes the old run instead of pairing with it.

    ``runs``: evaluate-stage rows (run_key, config, inputs, optionally finished_at; without it, later rows
    count as later)."""
    groups = comparison_groups(runs)
    order = (runs.finished_at.rank(method="first") if "finished_at" in runs else pd.Series(range(len(runs))))
    rank = dict(zip(runs.run_key, order.to_numpy()))
    problems = problems[problems.eval_run.isin(groups)].assign(group=lambda f: f.eval_run.map(groups))
    heads = problems[["group", "model_label", "eval_run"]].drop_duplicates()
    heads = heads.assign(rank=heads.eval_run.map(rank)).sort_values("rank")
    latest = set(heads.drop_duplicates(["group", "model_label"], keep="last").eval_run)
    return problems[problems.eval_run.isin(latest)]


def comparisons(problems: pd.DataFrame, runs: pd.DataFrame, references: tuple[str, ...] = REFERENCES,
                n_boot: int = N_BOOT, seed: int = SEED) -> pd.DataFrame:
    """Every run against each reference of its group, per benchmark.

    ``problems``: eval_problems rows (eval_run, model_label, benchmark, problem_id, accuracy, and n_samples
    with n_correct for the pass@k rows); ``runs``: evaluate-stage runs rows (run_key, config, inputs).
    """
    problems = grouped_latest(problems, runs)
    rows = []
    for _, members in problems.groupby("group", sort=True):
        models = members[["eval_run", "model_label"]].drop_duplicates().sort_values(["eval_run", "model_label"])
        for reference in references:
            ref_models = models[models.model_label == reference]
            if ref_models.empty:
                continue
            ref_run = ref_models.eval_run.iloc[0]
            ref = members[(members.eval_run == ref_run) & (members.model_label == reference)]
            ref = ref.set_index(["benchmark", "problem_id"])
            for run, label in models.itertuples(index=False):
                if label == reference:
                    continue
                mine = members[(members.eval_run == run) & (members.model_label == label)]
                for benchmark, part in mine.groupby("benchmark", sort=True):
                    paired = ref.reindex(list(zip(part.benchmark, part.problem_id)))
                    ok = paired.accuracy.notna().to_numpy()
                    if not ok.any():
                        continue
                    head = (run, label, benchmark, reference, ref_run)
                    for metric, a, b in _metrics(part[ok], paired[ok]):
                        low, high = paired_bootstrap(a - b, n_boot, seed)
                        rows.append((*head, metric, int(ok.sum()), float(a.mean()), float(b.mean()),
                                     float((a - b).mean()), low, high))
    return pd.DataFrame(rows, columns=COLUMNS)


def _metrics(mine: pd.DataFrame, ref: pd.DataFrame):
    """(metric, per-problem values of the compared run, of the reference) for the paired problems."""
    yield AVG, mine.accuracy.to_numpy(dtype=np.float64), ref.accuracy.to_numpy(dtype=np.float64)
    if "n_samples" not in mine or "n_samples" not in ref:
        return
    k = int(min(mine.n_samples.min(), ref.n_samples.min()))
    if k > 1:
        yield (f"pass@{k}", pass_at_k(mine.n_samples.to_numpy(), mine.n_correct.to_numpy(), k),
               pass_at_k(ref.n_samples.to_numpy(), ref.n_correct.to_numpy(), k))


# ---------------------------------------------------------------- merges

MERGE_COLUMNS = [
    "eval_run", "model_label", "method", "left_out", "scale", "benchmark", "seen", "n_problems",
    "accuracy", "base_accuracy", "expert_accuracy", "normalized", "retained_gain", "retained_low", "retained_high",
    "vs_task_arithmetic", "vs_ta_low", "vs_ta_high",
]
MEAN = "(mean of seen)"


def _retained(a: np.ndarray, b: np.ndarray, e: np.ndarray) -> float:
    gain = e.mean() - b.mean()
    return float((a.mean() - b.mean()) / gain) if gain > 0 else float("nan")


def bootstrap_statistic(columns: list[np.ndarray], statistic, n_boot: int = N_BOOT, seed: int = SEED,
                        level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ``statistic(*columns)`` over paired resamples of the rows."""
    n = len(columns[0])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    values = np.array([statistic(*(c[i] for c in columns)) for i in idx])
    values = values[np.isfinite(values)]
    if not values.size:
        return (float("nan"), float("nan"))
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def merge_summary(problems: pd.DataFrame, runs: pd.DataFrame, merges: pd.DataFrame,
                  n_boot: int = N_BOOT, seed: int = SEED) -> pd.DataFrame:
    """Per merged model and domain: accuracy, normalized accuracy, retained gain, and the difference from the
    task-arithmetic merge of the same experts, with paired bootstrap intervals over problems.

    ``merges``: merge_runs rows (run_key, method, label, scale) with the merge runs' ``inputs`` (JSON: the
    expert labels it merged). A domain is *seen* when its expert is among them; the mean row averages the
    seen domains (intervals from resampling every domain's problems together).
    """
    targets = {}
    for row in runs.itertuples(index=False):
        inputs = json.loads(row.inputs) if isinstance(row.inputs, str) and row.inputs else {}
        targets[row.run_key] = inputs.get("target")
    merge_info = {r.run_key: r for r in merges.itertuples(index=False)}
    problems = grouped_latest(problems, runs)
    out = []
    for _, members in problems.groupby("group", sort=True):
        def table(label):
            rows = members[members.model_label == label]
            return rows.set_index(["benchmark", "problem_id"])["accuracy"] if len(rows) else None

        base = table("base")
        if base is None:
            continue
        labels = sorted(set(members.model_label))
        for label in (lbl for lbl in labels if lbl.startswith("merged:")):
            mine = members[members.model_label == label]
            run = mine.eval_run.iloc[0]
            info = merge_info.get(targets.get(run))
            if info is None:
                continue
            experts = set(json.loads(info.inputs)) if isinstance(info.inputs, str) else set()
            left_out = _left_out(label)
            ta = table("merged:task-arithmetic" + (f"-without-{left_out}" if left_out else ""))
            seen_cols: list[list[np.ndarray]] = []
            for benchmark, part in mine.groupby("benchmark", sort=True):
                keys = list(zip(part.benchmark, part.problem_id))
                expert = table(f"expert:{benchmark}")
                if expert is None:
                    continue
                a = part.accuracy.to_numpy()
                b, e = base.reindex(keys).to_numpy(), expert.reindex(keys).to_numpy()
                ok = np.isfinite(b) & np.isfinite(e)
                a, b, e = a[ok], b[ok], e[ok]
                seen = f"expert:{benchmark}" in experts
                low, high = bootstrap_statistic([a, b, e], _retained, n_boot, seed)
                vs = (float("nan"),) * 3
                if ta is not None and not label.startswith("merged:task-arithmetic"):
                    t = ta.reindex(keys).to_numpy()[ok]
                    if np.isfinite(t).all():
                        vs = (float((a - t).mean()), *paired_bootstrap(a - t, n_boot, seed))
                        if seen:
                            seen_cols.append([a, b, e, t])
                elif seen:
                    seen_cols.append([a, b, e, a])
                out.append((run, label, info.method, left_out, info.scale, benchmark, seen,
                            int(ok.sum()), float(a.mean()), float(b.mean()), float(e.mean()),
                            float(a.mean() / e.mean()) if e.mean() > 0 else float("nan"), _retained(a, b, e),
                            low, high, *vs))
            if seen_cols:
                out.append(_mean_row(run, label, info, seen_cols, n_boot, seed))
    return pd.DataFrame(out, columns=MERGE_COLUMNS)


def _left_out(label: str) -> str | None:
    """The domain of ``merged:<method>[-seed<s>]-without-<domain>`` (None for a merge of every expert)."""
    return label.partition("-without-")[2] or None


def _mean_row(run, label, info, cols, n_boot, seed) -> tuple:
    """The seen domains' means; each bootstrap resample draws every domain's problems at once (equal sizes)."""
    n = min(len(c[0]) for c in cols)
    stacked = [np.stack([c[j][:n] for c in cols], axis=1) for j in range(4)]  # (n, domains) each

    def retained(a, b, e, _t):
        return float(np.mean([_retained(a[:, d], b[:, d], e[:, d]) for d in range(a.shape[1])]))

    def diff(a, _b, _e, t):
        return float((a - t).mean())

    a, b, e, t = stacked
    low, high = bootstrap_statistic(stacked, retained, n_boot, seed)
    vs_low, vs_high = bootstrap_statistic(stacked, diff, n_boot, seed)
    is_ta = label.startswith("merged:task-arithmetic")
    normalized = float(np.mean(a.mean(0) / np.where(e.mean(0) > 0, e.mean(0), np.nan)))
    return (run, label, info.method, _left_out(label), info.scale, MEAN, True, int(n * a.shape[1]),
            float(a.mean()), float(b.mean()), float(e.mean()), normalized, retained(a, b, e, t), low, high,
            float("nan") if is_ta else diff(a, b, e, t), float("nan") if is_ta else vs_low,
            float("nan") if is_ta else vs_high)
