"""The entropy experiment's report: markdown and PNGs from the results database alone.

Each question gets the SQL that answers it, the result of that SQL as a table, and a verdict
computed from that table: every number in the text is a cell of the table above it. Arms are
compared by their means over seeds; a difference counts only when it exceeds twice its
standard error over seeds (with one seed there is no noise estimate, and the report says so).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from evaluation.report import markdown_table
from evaluation.store import Store

from .entropy import ARMS, EXPERIMENT

GREEDY = "base@greedy"
BASE_ROWS = ("base", GREEDY)  # rows without a training run: the base model sampled, and greedy
ARM_ORDER = [*BASE_ROWS, *[a.name for a in ARMS]]

SUMMARY_SQL = f"""
SELECT arm, question, count(*) AS seeds,
       avg(entropy_initial) AS entropy_initial, avg(entropy_final) AS entropy_final,
       stddev_samp(entropy_final) AS entropy_final_sd, avg(entropy_ratio) AS entropy_ratio, stddev_samp(entropy_ratio) AS entropy_ratio_sd,
       avg(entropy_target) AS entropy_target,
       avg(reward_initial) AS reward_initial, avg(reward_final) AS reward_final,
       stddev_samp(reward_final) AS reward_final_sd,
       avg(heldout_accuracy) AS heldout_accuracy, stddev_samp(heldout_accuracy) AS heldout_accuracy_sd,
       avg(heldout_entropy) AS heldout_entropy, stddev_samp(heldout_entropy) AS heldout_entropy_sd
FROM experiment_results
WHERE experiment = '{EXPERIMENT}'
GROUP BY arm, question
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
    2: "Does adaptive entropy regularization hold entropy at its target while accuracy rises?",
    3: "Do positive-advantage tokens drive the collapse?",
    4: "Do more off-policy updates per batch raise training reward but not held-out accuracy?",
    5: "Does clip-higher keep entropy higher than a symmetric clip?",
    6: "Does a k-means subset match the full set, and does low-diversity data collapse faster?",
    7: "Does per-prompt entropy correlate with accuracy at the end of training?",
    8: "Do the newer remedies (Clip-Cov, KL-Cov, high-entropy tokens, W-REINFORCE, dynamic sampling) keep "
    "entropy above plain GRPO's without losing held-out accuracy?",
}
REMEDY_ARMS = ("clip-cov", "kl-cov", "high-entropy-tokens", "w-reinforce", "dynamic-sampling")

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


class Summary:
    """Per-arm means and seed spreads, with the comparisons the verdicts need."""

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame.set_index("arm") if "arm" in frame.columns else pd.DataFrame(index=pd.Index([], name="arm"))

    def has(self, *arms: str) -> bool:
        return all(a in self.frame.index for a in arms)

    def mean(self, arm: str, col: str) -> float:
        return float(self.frame.at[arm, col])

    def seeds(self, arm: str) -> int:
        return int(self.frame.at[arm, "seeds"])

    def sd(self, arm: str, col: str) -> float:
        """The seed standard deviation of ``col`` for ``arm``; NaN where there is none (one seed, base)."""
        sd_col = f"{col}_sd"
        if arm in BASE_ROWS or sd_col not in self.frame.columns:
            return float("nan")
        sd = self.frame.at[arm, sd_col]
        return float("nan") if sd is None else float(sd)

    def noise(self, a: str, b: str, col: str) -> float:
        """Twice the standard error of mean(a) - mean(b); NaN with a single seed."""
        if f"{col}_sd" not in self.frame.columns:
            return float("nan")
        se2 = 0.0
        for arm in (a, b):
            if arm in BASE_ROWS:
                continue
            sd = self.sd(arm, col)
            if math.isnan(sd):
                return float("nan")
            se2 += sd**2 / self.seeds(arm)
        return 2.0 * math.sqrt(se2)

    def compare(self, a: str, b: str, col: str) -> int:
        """+1 if a is above b beyond noise, -1 below, 0 within noise (sign of the raw difference
        when there is no noise estimate)."""
        diff = self.mean(a, col) - self.mean(b, col)
        noise = self.noise(a, b, col)
        if math.isnan(noise):
            return (diff > 0) - (diff < 0)
        return 0 if abs(diff) <= noise else (1 if diff > 0 else -1)

    def fmt(self, arm: str, col: str, digits: int = 3) -> str:
        value, sd = self.mean(arm, col), self.sd(arm, col)
        return f"{value:.{digits}f}" if math.isnan(sd) else f"{value:.{digits}f} ± {sd:.{digits}f}"


def _word(sign: int, up: str, down: str, same: str) -> str:
    return up if sign > 0 else down if sign < 0 else same


def verdict_collapse(s: Summary) -> tuple[str, str]:
    if not s.has("grpo"):
        return "not run", "the grpo arm has no results."
    ratio = s.mean("grpo", "entropy_ratio")
    text = (
        f"plain GRPO's training entropy goes from {s.fmt('grpo', 'entropy_initial')} to "
        f"{s.fmt('grpo', 'entropy_final')} nats, {ratio:.0%} of its start (entropy_ratio {s.fmt('grpo', 'entropy_ratio')})"
    )
    if s.has("base"):
        text += (
            f"; on the held-out prompts, {s.fmt('grpo', 'heldout_entropy')} against the base model's "
            f"{s.fmt('base', 'heldout_entropy')}"
        )
    if s.has(GREEDY):
        # learned or sharpened: greedy decoding is what a sharper distribution alone would give
        above = s.mean("grpo", "heldout_accuracy") > s.mean(GREEDY, "heldout_accuracy")
        text += (
            f"; held-out accuracy {s.fmt('grpo', 'heldout_accuracy')}, {'above' if above else 'not above'} the "
            f"base model's greedy decoding ({s.fmt(GREEDY, 'heldout_accuracy')}), so GRPO "
            f"{'learned more than sharpening gives' if above else 'did no better than sharpening'}"
        )
    if ratio <= 0.5:
        return "holds", text + "."
    if ratio < 0.9:
        return "partly", text + ": it falls, but less than half of it is lost in this many steps."
    return "does not hold", text + "."


def verdict_regularization(s: Summary) -> tuple[str, str]:
    parts, at_target = [], []
    for arm in ("entropy-adaptive", "entropy-aer"):
        if not s.has(arm):
            continue
        target, final = s.mean(arm, "entropy_target"), s.mean(arm, "entropy_final")
        off = (final - target) / target
        ok = abs(off) <= 0.2
        at_target.append(ok)
        acc = s.compare(arm, "grpo", "heldout_accuracy") if s.has("grpo") else 0
        parts.append(
            f"{arm} ends at {s.fmt(arm, 'entropy_final')} nats against its target {target:.3f} ({off:+.0%}, "
            f"{'within' if ok else 'outside'} ±20%), held-out accuracy {s.fmt(arm, 'heldout_accuracy')}, "
            f"{_word(acc, 'above', 'below', 'level with')} plain GRPO's {s.fmt('grpo', 'heldout_accuracy')}"
        )
    if s.has("entropy-fixed", "grpo"):
        sign = s.compare("entropy-fixed", "grpo", "entropy_final")
        parts.append(
            f"the fixed bonus ends at {s.fmt('entropy-fixed', 'entropy_final')} nats, "
            f"{_word(sign, 'above', 'below', 'level with')} plain GRPO's {s.fmt('grpo', 'entropy_final')}, "
            f"accuracy {s.fmt('entropy-fixed', 'heldout_accuracy')}"
        )
    if not at_target:
        return "not run", "no adaptive arm has results."
    rising = s.has("base") and all(
        s.mean(a, "heldout_accuracy") > s.mean("base", "heldout_accuracy") for a in ("entropy-adaptive", "entropy-aer") if s.has(a)
    )
    tail = f"; the base model's held-out accuracy is {s.fmt('base', 'heldout_accuracy')}" if s.has("base") else ""
    text = "; ".join(parts) + tail + "."
    if all(at_target) and rising:
        return "holds", text
    if any(at_target):
        return "partly", text
    return "does not hold", text


def verdict_positive_tokens(s: Summary) -> tuple[str, str]:
    if not s.has("grpo"):
        return "not run", "the grpo arm has no results."
    parts, checks = [], []
    if s.has("adv-nonneg", "adv-nonpos"):
        low = s.compare("adv-nonneg", "grpo", "entropy_ratio")
        high = s.compare("adv-nonpos", "grpo", "entropy_ratio")
        checks += [low < 0, high > 0]
        parts.append(
            f"entropy ratio (final / initial) is {s.fmt('adv-nonneg', 'entropy_ratio')} with only advantage >= 0 "
            f"tokens, {s.fmt('grpo', 'entropy_ratio')} with all tokens and {s.fmt('adv-nonpos', 'entropy_ratio')} with "
            f"only advantage <= 0 tokens"
        )
    lambdas = [a for a in ("par-0", "par-0.5", "par-entropy-guided") if s.has(a)]
    for arm in lambdas:
        sign = s.compare(arm, "grpo", "entropy_ratio")
        checks.append(sign > 0)
        parts.append(
            f"{arm}: ratio {s.fmt(arm, 'entropy_ratio')} ({_word(sign, 'above', 'below', 'level with')} lambda = 1), "
            f"held-out accuracy {s.fmt(arm, 'heldout_accuracy')} vs {s.fmt('grpo', 'heldout_accuracy')}"
        )
    if not checks:
        return "not run", "no token-weighting arm has results."
    text = "; ".join(parts) + "."
    return ("holds" if all(checks) else "partly" if any(checks) else "does not hold"), text


def verdict_offpolicy(s: Summary) -> tuple[str, str]:
    arms = [a for a in ("offpolicy-2", "offpolicy-4", "offpolicy-12") if s.has(a)]
    if not arms or not s.has("grpo"):
        return "not run", "the off-policy arms have no results."
    parts, reward_up, acc_flat = [], [], []
    for arm in arms:
        r = s.compare(arm, "grpo", "reward_final")
        a = s.compare(arm, "grpo", "heldout_accuracy")
        reward_up.append(r > 0)
        acc_flat.append(a <= 0)
        parts.append(
            f"{arm}: final training reward {s.fmt(arm, 'reward_final')} vs {s.fmt('grpo', 'reward_final')} at N = 1 "
            f"({_word(r, 'higher', 'lower', 'level')}), held-out accuracy {s.fmt(arm, 'heldout_accuracy')} vs "
            f"{s.fmt('grpo', 'heldout_accuracy')} ({_word(a, 'higher', 'lower', 'level')}), entropy ratio "
            f"{s.fmt(arm, 'entropy_ratio')} vs {s.fmt('grpo', 'entropy_ratio')}"
        )
    text = "; ".join(parts) + "."
    if all(reward_up) and all(acc_flat):
        return "holds", text
    if any(reward_up) or all(acc_flat):
        return "partly", text
    return "does not hold", text


def verdict_clipping(s: Summary) -> tuple[str, str]:
    # symmetric clipping at the same 12 updates per batch: on-policy, the ratio never leaves 1
    ref = "offpolicy-12"
    if not s.has(ref, "clip-higher"):
        return "not run", "the clipping arms (and offpolicy-12, their symmetric reference) have no results."
    hi = s.compare("clip-higher", ref, "entropy_final")
    text = (
        f"with 12 updates per batch, final entropy is {s.fmt('clip-higher', 'entropy_final')} with clip-higher and "
        f"{s.fmt(ref, 'entropy_final')} with the symmetric clip ({_word(hi, 'above', 'below', 'level with')} it)"
    )
    if s.has("clip-lower"):
        lo = s.compare("clip-lower", ref, "entropy_final")
        text += f", {s.fmt('clip-lower', 'entropy_final')} with clip-lower ({_word(lo, 'above', 'below', 'level with')} symmetric)"
    text += (
        f"; held-out accuracy {s.fmt('clip-higher', 'heldout_accuracy')} (clip-higher) vs "
        f"{s.fmt(ref, 'heldout_accuracy')} (symmetric)."
    )
    return ("holds" if hi > 0 else "does not hold"), text


def verdict_remedies(s: Summary) -> tuple[str, str]:
    arms = [a for a in REMEDY_ARMS if s.has(a)]
    if not s.has("grpo") or not arms:
        return "not run", "the remedy arms (and grpo, their reference) have no results."
    parts, kept = [], []
    for arm in arms:
        ent = s.compare(arm, "grpo", "entropy_final")
        acc = s.compare(arm, "grpo", "heldout_accuracy")
        kept.append(ent > 0 and acc >= 0)
        parts.append(f"{arm} ends at {s.fmt(arm, 'entropy_final')} nats ({_word(ent, 'above', 'below', 'level with')} "
                     f"GRPO), held-out accuracy {s.fmt(arm, 'heldout_accuracy')} "
                     f"({_word(acc, 'above', 'below', 'level with')} GRPO)")
    text = f"against plain GRPO's {s.fmt('grpo', 'entropy_final')} nats and {s.fmt('grpo', 'heldout_accuracy')}: " + (
        "; ".join(parts) + ".")
    word = "holds" if all(kept) else "partly" if any(kept) else "does not hold"
    return word, text


def verdict_data(s: Summary) -> tuple[str, str]:
    if not s.has("grpo", "data-full"):
        return "not run", "the data arms have no results."
    match = s.compare("grpo", "data-full", "heldout_accuracy")
    parts = [
        f"held-out accuracy {s.fmt('grpo', 'heldout_accuracy')} on 600 k-means prompts vs "
        f"{s.fmt('data-full', 'heldout_accuracy')} on the full split ({_word(match, 'above', 'below', 'level')})"
    ]
    if s.has("data-random"):
        parts.append(f"{s.fmt('data-random', 'heldout_accuracy')} on 600 random prompts")
    faster = None
    if s.has("data-few-clusters"):
        # faster than every more diverse subset that ran: k-means (grpo) and random
        peers = [a for a in ("grpo", "data-random") if s.has(a)]
        faster = all(s.compare("data-few-clusters", a, "entropy_ratio") < 0 for a in peers)
        parts.append(
            f"entropy ratio {s.fmt('data-few-clusters', 'entropy_ratio')} on few clusters vs "
            f"{s.fmt('grpo', 'entropy_ratio')} on k-means prompts"
            + (f" and {s.fmt('data-random', 'entropy_ratio')} on random ones" if s.has("data-random") else "")
            + f" (few-clusters accuracy {s.fmt('data-few-clusters', 'heldout_accuracy')})"
        )
    text = "; ".join(parts) + "."
    checks = [match >= 0] + ([faster] if faster is not None else [])
    return ("holds" if all(checks) else "partly" if any(checks) else "does not hold"), text


def verdict_spearman(spear: pd.DataFrame) -> tuple[str, str]:
    if not len(spear):
        return "not run", "no evaluation of a trained arm."
    row = spear.set_index("arm")
    arm = "grpo" if "grpo" in row.index else row.index[0]
    rho = float(row.at[arm, "spearman"])
    overall = float(spear["spearman"].mean())
    strength = "weak" if abs(rho) < 0.3 else "moderate" if abs(rho) < 0.6 else "strong"
    text = (
        f"Spearman's rho between a held-out prompt's mean token entropy and its accuracy is {rho:.3f} for {arm} "
        f"(seeds from {float(row.at[arm, 'spearman_min']):.3f} to {float(row.at[arm, 'spearman_max']):.3f}), "
        f"{overall:.3f} averaged over the arms: a {strength}{' negative' if rho < 0 else ''} correlation."
    )
    return ("holds" if strength == "weak" else "does not hold"), text


def _ordered(frame: pd.DataFrame) -> pd.DataFrame:
    rank = {a: i for i, a in enumerate(ARM_ORDER)}
    return frame.sort_values("arm", key=lambda col: col.map(lambda a: rank.get(a, len(rank)))).reset_index(drop=True)


def _curves_png(curves: pd.DataFrame, out_dir: Path) -> str:
    questions = [q for q in (1, 2, 3, 4, 5, 6, 8) if (curves["question"] == q).any()]
    fig = Figure(figsize=(12, 3.4 * math.ceil(len(questions) / 3)))
    axes = fig.subplots(math.ceil(len(questions) / 3), 3, squeeze=False).ravel()
    for ax, q in zip(axes, questions):
        ref = "offpolicy-12" if q == 5 else "grpo"  # the clipping arms' symmetric reference
        arms = [ref, *sorted(set(curves.loc[curves["question"] == q, "arm"]) - {ref})]
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


def _accuracy_png(summary: pd.DataFrame, out_dir: Path) -> str:
    fig = Figure(figsize=(10, 3.6))
    ax = fig.subplots()
    ax.bar(summary["arm"], summary["heldout_accuracy"], yerr=summary["heldout_accuracy_sd"].fillna(0.0), capsize=3)
    ax.set(ylabel="held-out accuracy (mean over seeds)", title="Held-out accuracy per arm (error bars: seed sd)")
    ax.tick_params(axis="x", labelrotation=60, labelsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "heldout_accuracy.png", dpi=100)
    return "heldout_accuracy.png"


def write_entropy_report(store: Store, out_dir: Path) -> Path:
    """Write ``entropy.md`` and its PNGs into ``out_dir``; returns the markdown path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = _ordered(store.query(SUMMARY_SQL))
    if not len(summary):
        raise ValueError(f"{store.path} holds no '{EXPERIMENT}' experiment rows; run `polymath experiment entropy`")
    s = Summary(summary)
    spear = _ordered(store.query(SPEARMAN_SQL))
    data = store.query(DATA_SQL)
    arms_table = pd.DataFrame([{"arm": a.name, "question": a.question, "what": a.what} for a in ARMS])
    lines = [
        "# Entropy findings in miniature (arXiv 2511.05993)",
        "",
        f"Results from the workspace's `{store.path.name}`.",
        "Training entropy is the token-mean entropy of each step's rollouts; *initial* is the mean over the first "
        "10% of steps, *final* over the last 20%, *entropy_ratio* final / initial per seed. Held-out columns "
        "evaluate each arm's policy on the test split of its training domain. Cells are means over seeds "
        "(± the sample standard deviation where there are several); a difference between arms counts only when "
        "it exceeds twice its standard error.",
        "",
        "## Arms",
        "",
        markdown_table(arms_table),
        "",
        "Compute spent on the arms (each stage run's own wall time, whenever it ran):",
        "",
        *_sql_block(COST_SQL),
        markdown_table(store.query(COST_SQL), 1),
        "",
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
        "## Findings",
        "",
    ]
    verdicts = {
        1: verdict_collapse(s),
        2: verdict_regularization(s),
        3: verdict_positive_tokens(s),
        4: verdict_offpolicy(s),
        5: verdict_clipping(s),
        6: verdict_data(s),
        7: verdict_spearman(spear),
        8: verdict_remedies(s),
    }
    overview = pd.DataFrame([{"question": f"Q{q}. {QUESTIONS[q]}", "here": verdicts[q][0]} for q in QUESTIONS])
    lines += [markdown_table(overview), ""]
    for q, (word, text) in verdicts.items():
        lines += [f"### Q{q}. {QUESTIONS[q]} **{word}**", "", f"Here (from the results per arm above): {text}", ""]
        if q == 6 and len(data):
            wide = data.pivot(index="data", columns="metric", values="value").reset_index()
            lines += ["Diversity of each training set (the chosen strategy's rows):", "", *_sql_block(DATA_SQL),
                      markdown_table(wide), ""]
        if q == 5:
            lines += ["Fraction of tokens whose ratio was clipped, per arm (0 on-policy: the ratio is 1):", "",
                      *_sql_block(CLIP_SQL), markdown_table(_ordered(store.query(CLIP_SQL)), 4), ""]
        if q == 7:
            lines += [*_sql_block(SPEARMAN_SQL), markdown_table(spear), ""]
        lines += [f"Paper: {PAPER[q]}", ""]
    path = out_dir / "entropy.md"
    path.write_text("\n".join(lines) + "\n")
    return path
