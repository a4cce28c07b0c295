"""The entropy experiment's report: markdown and PNGs from the results database alone.

Each question gets the SQL that answers it, the result of that SQL as a table, and a verdict
computed from that table (experiments/entropy_verdicts.py): every number in the text is a cell of
the table above it.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from evaluation.report import markdown_table
from evaluation.store import Store
from pipeline.evaluate import GREEDY_LABEL

from .entropy import ARMS, EXPERIMENT, REFERENCE, REMOVED
from .entropy_verdicts import (
    BASE_ROWS,
    LEVEL_MARGIN,
    MATCH_MARGIN,
    MIN_ACTING_SHARE,
    Results,
    verdict_clipping,
    verdict_collapse,
    verdict_data,
    verdict_offpolicy,
    verdict_positive_tokens,
    verdict_regularization,
    verdict_remedies,
    verdict_spearman,
)

ARM_ORDER = [*BASE_ROWS, *[a.name for a in ARMS]]

SUMMARY_SQL = f"""
SELECT arm, question, count(*) AS seeds,
       avg(entropy_initial) AS entropy_initial, avg(entropy_final) AS entropy_final,
       stddev_samp(entropy_final) AS entropy_final_sd, avg(entropy_ratio) AS entropy_ratio, stddev_samp(entropy_ratio) AS entropy_ratio_sd,
       avg(entropy_target) AS entropy_target,
       avg(reward_initial) AS reward_initial, avg(reward_final) AS reward_final,
       stddev_samp(reward_final) AS reward_final_sd,
       avg(heldout_accuracy) AS heldout_accuracy, stddev_samp(heldout_accuracy) AS heldout_accuracy_sd,
       avg(heldout_entropy) AS heldout_entropy, stddev_samp(heldout_entropy) AS heldout_entropy_sd,
       avg(ood_accuracy) AS ood_accuracy, stddev_samp(ood_accuracy) AS ood_accuracy_sd
FROM experiment_results
WHERE experiment = '{EXPERIMENT}'
GROUP BY arm, question
"""

# The verdicts read these per-seed rows: arms are compared seed by seed.
SEEDS_SQL = f"""
SELECT arm, question, seed, entropy_initial, entropy_final, entropy_ratio, entropy_target, reward_final,
       heldout_accuracy, heldout_entropy, ood_accuracy, reference_entropy_digit, reference_entropy_other,
       coef_mean, coef_acting, lambda_mean, lambda_acting, par_threshold, pos_clipped_high_share
FROM experiment_results
WHERE experiment = '{EXPERIMENT}'
ORDER BY arm, seed
"""

# What each controller applied: the mean coefficient (lambda) over steps and the share of steps it acted on.
CONTROL_SQL = f"""
SELECT arm, count(*) AS seeds, avg(entropy_target) AS target, avg(coef_mean) AS coef_mean,
       avg(coef_acting) AS coef_acting, avg(par_threshold) AS par_threshold, avg(lambda_mean) AS lambda_mean,
       avg(lambda_acting) AS lambda_acting
FROM experiment_results
WHERE experiment = '{EXPERIMENT}' AND question IN (2, 3) AND train_run IS NOT NULL
GROUP BY arm
"""

DATA_SQL = f"""
SELECT a.data, m.metric, avg(m.value) AS value
FROM (SELECT DISTINCT data, curate_run FROM experiment_arms
      WHERE experiment = '{EXPERIMENT}' AND curate_run IS NOT NULL) a
JOIN curation_metrics m ON m.run_key = a.curate_run
JOIN (SELECT run_key, json_extract_string(config, '$.strategy') AS strategy FROM runs WHERE stage = 'curate') r
  ON r.run_key = a.curate_run AND r.strategy = m.strategy
WHERE m.metric IN ('vendi', 'mean_coverage', 'clusters_hit')
GROUP BY ALL
"""

SPEARMAN_SQL = f"""
SELECT a.arm, count(*) AS seeds, avg(c.spearman) AS spearman, min(c.spearman) AS spearman_min,
       max(c.spearman) AS spearman_max, avg(c.n_problems) AS problems
FROM experiment_arms a
JOIN entropy_vs_accuracy c ON c.eval_run = a.eval_run AND c.benchmark = a.domain
WHERE a.experiment = '{EXPERIMENT}'
GROUP BY a.arm
"""

COST_SQL = f"""
SELECT r.stage, count(*) AS runs, sum(r.seconds) / 60 AS minutes
FROM runs r
WHERE r.run_key IN (SELECT train_run FROM experiment_arms WHERE experiment = '{EXPERIMENT}')
   OR (r.stage = 'evaluate' AND r.run_key IN (SELECT eval_run FROM experiment_arms WHERE experiment = '{EXPERIMENT}'))
GROUP BY r.stage ORDER BY r.stage
"""

CLIP_SQL = f"""
SELECT a.arm, count(DISTINCT a.seed) AS seeds,
       avg(t.value) FILTER (WHERE t.metric = 'clip_frac_low') AS clip_frac_low,
       avg(t.value) FILTER (WHERE t.metric = 'clip_frac_high') AS clip_frac_high
FROM experiment_arms a JOIN train_steps t ON t.run_key = a.train_run
WHERE a.experiment = '{EXPERIMENT}' AND a.question IN (1, 4, 5, 8)
GROUP BY a.arm
"""

# The shape of every run: the data it saw (rollout batches, equal for every arm by design), the optimizer
# steps it took on it, and how long its held-out answers are (chains, not two-token guesses).
SHAPE_SQL = f"""
WITH train AS (
  SELECT a.arm, a.seed, max(t.value) FILTER (WHERE t.metric = 'rollout_batches') AS rollout_batches,
         max(t.step) AS optimizer_steps
  FROM experiment_arms a JOIN train_steps t ON t.run_key = a.train_run
  WHERE a.experiment = '{EXPERIMENT}'
  GROUP BY ALL
), heldout AS (
  SELECT a.arm, count(DISTINCT a.seed) AS seeds, median(s.n_tokens) AS median_tokens,
         avg(s.hit_cap::DOUBLE) AS hit_cap_rate
  FROM experiment_arms a JOIN eval_samples s ON s.eval_run = a.eval_run AND s.benchmark = a.domain
  WHERE a.experiment = '{EXPERIMENT}'
  GROUP BY a.arm
)
SELECT h.arm, h.seeds, min(t.rollout_batches) AS rollout_batches_min, max(t.rollout_batches) AS rollout_batches_max,
       min(t.optimizer_steps) AS optimizer_steps_min, max(t.optimizer_steps) AS optimizer_steps_max,
       h.median_tokens, h.hit_cap_rate
FROM heldout h LEFT JOIN train t USING (arm)
GROUP BY ALL
"""

# Q3: Cov(logp, A) over each step's gradient tokens and its shares from positive- and non-positive-advantage
# tokens (they add up to it); entropy falls where the covariance is positive (arXiv 2505.22617).
COV_SPLIT_SQL = f"""
SELECT a.arm, count(DISTINCT a.seed) AS seeds,
       avg(t.value) FILTER (WHERE t.metric = 'logp_adv_cov') AS cov,
       avg(t.value) FILTER (WHERE t.metric = 'logp_adv_cov_pos') AS cov_from_positive,
       avg(t.value) FILTER (WHERE t.metric = 'logp_adv_cov_neg') AS cov_from_non_positive
FROM experiment_arms a JOIN train_steps t ON t.run_key = a.train_run
WHERE a.experiment = '{EXPERIMENT}' AND a.question IN (1, 3)
GROUP BY a.arm
"""

# Q3 on fixed contexts: each arm's next-token entropy along the held-out reference solutions (the same tokens
# for every arm), token-weighted over problems and averaged over seeds.
REFERENCE_SQL = f"""
SELECT arm, count(*) AS seeds, avg(reference_entropy_digit) AS digit_positions,
       avg(reference_entropy_other) AS other_positions
FROM experiment_results
WHERE experiment = '{EXPERIMENT}' AND arm <> '{GREEDY_LABEL}'
  AND coalesce(reference_entropy_digit, reference_entropy_other) IS NOT NULL
GROUP BY arm
"""

# The controllers' applied values per rollout batch (the mean over that batch's optimizer steps and the seeds).
CONTROL_CURVES_SQL = f"""
SELECT a.arm, r.value AS step, avg(c.value) FILTER (WHERE c.metric = 'entropy_coef') AS coef,
       avg(c.value) FILTER (WHERE c.metric = 'par_lambda') AS lambda
FROM experiment_arms a
JOIN train_steps r ON r.run_key = a.train_run AND r.metric = 'rollout_batches'
JOIN train_steps c ON c.run_key = r.run_key AND c.step = r.step AND c.metric IN ('entropy_coef', 'par_lambda')
WHERE a.experiment = '{EXPERIMENT}' AND a.question IN (2, 3)
GROUP BY ALL ORDER BY a.arm, step
"""

# One point per rollout batch (off-policy arms take several optimizer steps on each), so every arm's curve
# runs over the same data.
CURVES_SQL = f"""
SELECT a.arm, a.question, c.rollout_batches AS step, avg(c.entropy) AS entropy, avg(c.reward) AS reward
FROM experiment_arms a JOIN train_curves c ON c.run_key = a.train_run
WHERE a.experiment = '{EXPERIMENT}'
GROUP BY ALL ORDER BY a.arm, step
"""

QUESTIONS = {
    1: "Does entropy collapse under plain GRPO?",
    2: "Does adaptive entropy regularization hold entropy at its target while accuracy rises above GRPO's?",
    3: "Do positive-advantage tokens drive the collapse?",
    4: "Do more off-policy updates per batch raise training reward but not held-out accuracy?",
    5: "Does clip-higher keep entropy higher than a symmetric clip?",
    6: "Does a small k-means subset seen many times match the full set seen once, and does low-diversity data "
    "collapse faster?",
    7: "Does per-prompt entropy correlate with accuracy at the end of training?",
    8: "Do the newer remedies (Clip-Cov, KL-Cov, high-entropy tokens, W-REINFORCE, dynamic sampling) keep "
    "entropy above plain GRPO's without losing held-out accuracy?",
}

# Reported by arXiv 2511.05993 (Qwen2.5-Math-7B on DAPO-Math-17k), from shared/reference.
PAPER = {
    1: "GRPO ends at entropy 0.118 (in-domain Avg@64 44.12).",
    2: "adaptive regularization with target = initial entropy 0.3657 ends at 0.309, Avg@64 45.35.",
    3: "entropy-guided PAR ends at 0.187 (Avg@64 45.66); training on advantage >= 0 tokens only "
    "ends at 0.015, on advantage <= 0 only at 0.884.",
    4: "more off-policy updates per batch raised training reward but not held-out accuracy.",
    5: "clip-higher ends at 0.539 (Avg@64 43.96) against GRPO's 0.118.",
    6: "616 prompts chosen by k-means matched the full set (45.13 vs 44.12); low-diversity data "
    "collapsed entropy faster.",
    7: "per-prompt entropy correlates weakly with accuracy.",
    8: "not measured by arXiv 2511.05993; their own papers (arXiv 2505.22617, 2506.01939, 2506.01347, "
    "2503.14476) report each keeping entropy higher than GRPO at equal or better accuracy.",
}


def _sql_block(sql: str) -> list[str]:
    return ["```sql", sql.strip(), "```", ""]


def _ordered(frame: pd.DataFrame) -> pd.DataFrame:
    rank = {a: i for i, a in enumerate(ARM_ORDER)}
    return frame.sort_values("arm", key=lambda col: col.map(lambda a: rank.get(a, len(rank)))).reset_index(drop=True)


def _curves_png(curves: pd.DataFrame, out_dir: Path) -> str:
    questions = [q for q in (1, 2, 3, 4, 5, 6, 8) if (curves["question"] == q).any()]
    fig = Figure(figsize=(12, 3.4 * math.ceil(len(questions) / 3)))
    axes = fig.subplots(math.ceil(len(questions) / 3), 3, squeeze=False).ravel()
    for ax, q in zip(axes, questions):
        shown = set(curves.loc[curves["question"] == q, "arm"])
        refs = sorted({REFERENCE[a] for a in shown if a in REFERENCE} - shown)  # each arm beside its reference
        arms = [*refs, *sorted(shown)]
        for arm in arms:
            g = curves[curves["arm"] == arm]
            ax.plot(g["step"], g["entropy"].rolling(10, min_periods=1).mean(), label=arm)
        ax.set(title=f"Q{q}: training entropy (10-batch mean)", xlabel="rollout batch", ylabel="nats")
        ax.legend(fontsize=7)
    for ax in axes[len(questions):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(out_dir / "entropy_curves.png", dpi=100)
    return "entropy_curves.png"


def _controls_png(controls: pd.DataFrame, out_dir: Path) -> str:
    fig = Figure(figsize=(10, 3.4))
    coef_ax, lambda_ax = fig.subplots(1, 2)
    for arm, g in controls.groupby("arm"):
        if g["coef"].fillna(0).abs().max() > 0:
            coef_ax.plot(g["step"], g["coef"], label=arm)
        if (g["lambda"].fillna(1) < 1).any():
            lambda_ax.plot(g["step"], g["lambda"], label=arm)
    coef_ax.set(title="entropy coefficient applied", xlabel="rollout batch")
    lambda_ax.set(title="PAR lambda applied", xlabel="rollout batch", ylim=(-0.05, 1.05))
    for ax in (coef_ax, lambda_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "controllers.png", dpi=100)
    return "controllers.png"


def _accuracy_png(summary: pd.DataFrame, out_dir: Path) -> str:
    fig = Figure(figsize=(10, 3.6))
    ax = fig.subplots()
    ax.bar(summary["arm"], summary["heldout_accuracy"], yerr=summary["heldout_accuracy_sd"].fillna(0.0), capsize=3)
    ax.set(ylabel="held-out accuracy (mean over seeds)", title="Held-out accuracy per arm (error bars: seed sd)")
    ax.tick_params(axis="x", labelrotation=60, labelsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "heldout_accuracy.png", dpi=100)
    return "heldout_accuracy.png"


def _not_run(ran: set[str]) -> pd.DataFrame:
    """The arms outside this run, each with the reason it is not in the default run, and the removed ones."""
    rows = [{"arm": a.name, "question": a.question, "why not here": a.why_not or "not asked for (--arms)"}
            for a in ARMS if a.name not in ran]
    rows += [{"arm": name, "question": 3, "why not here": f"removed: {why}"} for name, why in REMOVED.items()]
    return pd.DataFrame(rows)


def _checks_table(checks) -> list[str]:
    if not checks:
        return []
    return ["Claims, each a paired difference over seeds (mean [95% t interval] (seeds)):", "",
            markdown_table(pd.DataFrame([c.row() for c in checks])), ""]


def write_entropy_report(store: Store, out_dir: Path) -> Path:
    """Write ``entropy.md`` and its PNGs into ``out_dir``; returns the markdown path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = _ordered(store.query(SUMMARY_SQL))
    if not len(summary):
        raise ValueError(f"{store.path} holds no '{EXPERIMENT}' experiment rows; run `polymath experiment entropy`")
    r = Results(store.query(SEEDS_SQL))
    spear = _ordered(store.query(SPEARMAN_SQL))
    data = store.query(DATA_SQL)
    ran = set(summary["arm"])
    arms_table = pd.DataFrame([{"arm": a.name, "question": a.question, "what": a.what} for a in ARMS if a.name in ran])
    lines = [
        "# Entropy findings in miniature (arXiv 2511.05993)",
        "",
        f"Results from the workspace's `{store.path.name}`.",
        "Training entropy is the token-mean entropy of each step's rollouts; *initial* is the mean over the first "
        "10% of steps, *final* over the last 20%, *entropy_ratio* final / initial per seed. Held-out columns "
        "evaluate each arm's policy on the test split of its training domain; *ood_accuracy* on a domain it never "
        "trained on. Cells are means over seeds (± the sample standard deviation where there are several).",
        "",
        "How verdicts are decided: every claim compares two arms seed by seed (each seed of every arm starts from "
        "the same model and first rollouts) and gives the mean of the per-seed differences with its 95% t interval. "
        "A claim *holds* when the interval lies on the side of 0 it states, *does not hold* when it lies on the "
        "other side, and is *inconclusive* when it contains 0; a *matches* claim holds only when the whole interval "
        f"lies within ±{MATCH_MARGIN:g} accuracy, a *not higher* / *no loss* claim when it stays within "
        f"{LEVEL_MARGIN:g}. A controller that applied a non-neutral value on fewer than {MIN_ACTING_SHARE:.0%} of "
        "its steps *did not act*, and its question says so. A question holds when all its claims hold.",
        "",
        "## Arms",
        "",
        markdown_table(arms_table),
        "",
        "Arms not in this run:",
        "",
        markdown_table(_not_run(ran)),
        "",
        "Compute spent on the arms (each stage run's own wall time, whenever it ran):",
        "",
        *_sql_block(COST_SQL),
        markdown_table(store.query(COST_SQL), 1),
        "",
        "## What each arm saw",
        "",
        "Rollout batches and optimizer steps per training run (min and max over seeds), and the median length in "
        "tokens of the held-out completions with the share that hit the token cap:",
        "",
        *_sql_block(SHAPE_SQL),
        markdown_table(_ordered(store.query(SHAPE_SQL)), 3),
        "",
        "What the controllers applied (targets and thresholds are relative to each run's initial entropy, measured "
        "on 4 rollout batches before training):",
        "",
        *_sql_block(CONTROL_SQL),
        markdown_table(_ordered(store.query(CONTROL_SQL)), 3),
        "",
        f"![coefficient and lambda per rollout batch]({_controls_png(store.query(CONTROL_CURVES_SQL), out_dir)})",
        "",
        "Per rollout batch (mean over its optimizer steps and the seeds):",
        "",
        *_sql_block(CONTROL_CURVES_SQL),
        "## Results per arm",
        "",
        *_sql_block(SUMMARY_SQL),
        markdown_table(summary.drop(columns=[c for c in summary.columns if c.endswith("_sd")])),
        "",
        f"![training entropy per question]({_curves_png(store.query(CURVES_SQL), out_dir)})",
        "",
        "The curves are the mean over seeds of this query, smoothed over 10 steps:",
        "",
        *_sql_block(CURVES_SQL),
        f"![held-out accuracy per arm]({_accuracy_png(summary[~summary['arm'].isin(BASE_ROWS)], out_dir)})",
        "",
        "Seed standard deviations of the same query:",
        "",
        markdown_table(summary[["arm", "seeds", *[c for c in summary.columns if c.endswith("_sd")]]]),
        "",
        "The verdicts read the per-seed rows:",
        "",
        *_sql_block(SEEDS_SQL),
        "## Findings",
        "",
    ]
    verdicts = {
        1: verdict_collapse(r),
        2: verdict_regularization(r),
        3: verdict_positive_tokens(r),
        4: verdict_offpolicy(r),
        5: verdict_clipping(r),
        6: verdict_data(r),
        7: verdict_spearman(spear),
        8: verdict_remedies(r),
    }
    overview = pd.DataFrame([{"question": f"Q{q}. {QUESTIONS[q]}", "here": verdicts[q].word} for q in QUESTIONS])
    lines += [markdown_table(overview), ""]
    for q, v in verdicts.items():
        lines += [f"### Q{q}. {QUESTIONS[q]} **{v.word}**", "", f"Here: {v.text}", "", *_checks_table(v.checks)]
        if q == 6 and len(data):
            wide = data.pivot(index="data", columns="metric", values="value").reset_index()
            lines += ["Diversity of each training set (the chosen strategy's rows):", "", *_sql_block(DATA_SQL),
                      markdown_table(wide), ""]
        if q == 5:
            lines += ["Fraction of tokens whose ratio was clipped, per arm (0 on-policy: the ratio is 1):", "",
                      *_sql_block(CLIP_SQL), markdown_table(_ordered(store.query(CLIP_SQL)), 4), ""]
        if q == 3:
            split = _ordered(store.query(COV_SPLIT_SQL))
            if split[["cov_from_positive", "cov_from_non_positive"]].notna().any().any():
                lines += ["Cov(logp, A) per step, mean over steps and seeds, split by the sign of the advantage "
                          "(the two shares add up to the covariance; steps logged before the split have none):",
                          "", *_sql_block(COV_SPLIT_SQL), markdown_table(split, 5), ""]
            fixed = _ordered(store.query(REFERENCE_SQL))
            if len(fixed):
                lines += ["Entropy on fixed contexts: the next-token entropy (nats) of each arm along the reference "
                          "solutions of the held-out problems, which every arm reads token for token, so it does not "
                          "move with the length of the chains an arm writes:", "", *_sql_block(REFERENCE_SQL),
                          markdown_table(fixed, 4), ""]
        if q == 7:
            lines += [*_sql_block(SPEARMAN_SQL), markdown_table(spear), ""]
        lines += [f"Paper: {PAPER[q]}", ""]
    path = out_dir / "entropy.md"
    path.write_text("\n".join(lines) + "\n")
    return path
