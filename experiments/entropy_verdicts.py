"""The entropy experiment's verdicts: each question answered from the per-arm summary table.

Arms are compared by their means over seeds; a difference counts only when it exceeds twice its
standard error over seeds (with one seed there is no noise estimate, and the verdict says so).
"""

from __future__ import annotations

import math

import pandas as pd

from pipeline.evaluate import GREEDY_LABEL

from .entropy import ARMS, REFERENCE

BASE_ROWS = ("base", GREEDY_LABEL)  # rows without a training run: the base model sampled, and greedy
REMEDY_ARMS = tuple(a.name for a in ARMS if a.question == 8)


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
    if s.has(GREEDY_LABEL):
        # learned or sharpened: greedy decoding is what a sharper distribution alone would give
        above = s.mean("grpo", "heldout_accuracy") > s.mean(GREEDY_LABEL, "heldout_accuracy")
        text += (
            f"; held-out accuracy {s.fmt('grpo', 'heldout_accuracy')}, {'above' if above else 'not above'} the "
            f"base model's greedy decoding ({s.fmt(GREEDY_LABEL, 'heldout_accuracy')}), so GRPO "
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
    arms = [a.name for a in ARMS if a.question == 4 and s.has(a.name)]
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
    # symmetric clipping at the same updates per batch: on-policy, the ratio never leaves 1
    ref = REFERENCE["clip-higher"]
    if not s.has(ref, "clip-higher"):
        return "not run", f"the clipping arms (and {ref}, their symmetric reference) have no results."
    hi = s.compare("clip-higher", ref, "entropy_final")
    text = (
        f"against {ref} (the same updates per batch), final entropy is {s.fmt('clip-higher', 'entropy_final')} with clip-higher and "
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
    arms = [a for a in REMEDY_ARMS if s.has(a, REFERENCE[a])]
    if not arms:
        return "not run", "the remedy arms (and their reference arms) have no results."
    parts, kept = [], []
    for arm in arms:
        ref = REFERENCE[arm]
        ent = s.compare(arm, ref, "entropy_final")
        acc = s.compare(arm, ref, "heldout_accuracy")
        kept.append(ent > 0 and acc >= 0)
        parts.append(f"{arm} ends at {s.fmt(arm, 'entropy_final')} nats ({_word(ent, 'above', 'below', 'level with')} "
                     f"{ref}'s {s.fmt(ref, 'entropy_final')}), held-out accuracy {s.fmt(arm, 'heldout_accuracy')} "
                     f"({_word(acc, 'above', 'below', 'level with')} {ref}'s {s.fmt(ref, 'heldout_accuracy')})")
    text = "each against the arm with its update schedule: " + "; ".join(parts) + "."
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
