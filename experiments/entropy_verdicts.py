"""The entropy experiment's verdicts: each question answered from the per-seed results of its arms.

Every claim is a paired comparison over seeds with a 95% t interval (experiments/entropy_stats.py); a claim
holds or fails only when its interval excludes 0 (or, for "matches", lies inside a stated margin), and is
inconclusive otherwise. A question's verdict combines its claims; a controller that applied its neutral value
on most steps makes its question "did not act".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from evaluation.views import ACTING_COEF, ACTING_LAMBDA
from pipeline.evaluate import GREEDY_LABEL

from .entropy import ARMS, Q5_MIN_SHARE, REFERENCE
from .entropy_stats import (
    DID_NOT_ACT,
    Check,
    Difference,
    at_least,
    at_most,
    combine,
    directional,
    equivalent,
    paired_difference,
    paired_values,
)

BASE_ROWS = ("base", GREEDY_LABEL)  # rows without a training run: the base model sampled, and greedy
REMEDY_ARMS = tuple(a.name for a in ARMS if a.question == 8)
# A controller that acted on fewer than this share of its steps did not act.
MIN_ACTING_SHARE = 0.2
# Q6's "matches": the subset's held-out accuracy within 3 points of the full set's.
MATCH_MARGIN = 0.03
# Q4 and Q8's "not higher" / "no loss": within 2 points.
LEVEL_MARGIN = 0.02


@dataclass
class Verdict:
    word: str
    text: str
    checks: list[Check] = field(default_factory=list)


class Results:
    """Per-arm, per-seed results (one row per arm and seed) with the means and paired differences verdicts read."""

    def __init__(self, per_seed: pd.DataFrame):
        self.frame = per_seed

    def has(self, *arms: str) -> bool:
        return all((self.frame["arm"] == a).any() for a in arms) if len(self.frame) else False

    def values(self, arm: str, col: str) -> pd.Series:
        return self.frame.loc[self.frame.arm == arm].set_index("seed")[col].dropna()

    def mean(self, arm: str, col: str) -> float:
        v = self.values(arm, col)
        return float(v.mean()) if len(v) else math.nan

    def fmt(self, arm: str, col: str, digits: int = 3) -> str:
        v = self.values(arm, col)
        if len(v) < 2:
            return f"{self.mean(arm, col):.{digits}f}"
        return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"

    def diff(self, a: str, b: str, col: str) -> Difference:
        """a - b of ``col``, paired by seed (a base row is one number)."""
        return paired_difference(self.frame, a, b, col, constant=set(BASE_ROWS))

    def change(self, arm: str, after: str, before: str) -> Difference:
        """``after - before`` within one arm, per seed."""
        v = self.frame.loc[self.frame.arm == arm].set_index("seed")
        return paired_values(arm, arm, f"{after} - {before}", (v[after] - v[before]).dropna())

    def acted(self, arm: str, col: str) -> bool:
        return self.mean(arm, col) >= MIN_ACTING_SHARE


def _acting(r: Results, arm: str, col: str, applied: str, what: str) -> Check | None:
    """A check that fails as "did not act" when the controller of ``arm`` stayed neutral on most steps."""
    if r.acted(arm, col):
        return None
    share = r.mean(arm, col)
    d = Difference(arm, arm, col, share, math.nan, math.nan, len(r.values(arm, col)))
    return Check(f"{arm}'s controller acts ({what} on {share:.0%} of steps, mean {r.fmt(arm, applied)})", d,
                 f"acts if {what} on at least {MIN_ACTING_SHARE:.0%} of steps", DID_NOT_ACT)


def verdict_collapse(r: Results) -> Verdict:
    if not r.has("grpo"):
        return Verdict("not run", "the grpo arm has no results.")
    checks = [directional("plain GRPO's training entropy falls (final - initial)",
                          r.change("grpo", "entropy_final", "entropy_initial"), -1)]
    text = (f"plain GRPO's training entropy goes from {r.fmt('grpo', 'entropy_initial')} to "
            f"{r.fmt('grpo', 'entropy_final')} nats (final / initial {r.fmt('grpo', 'entropy_ratio')})")
    if r.has(GREEDY_LABEL):
        sharp = directional("GRPO's held-out accuracy is above the base model's greedy decoding",
                            r.diff("grpo", GREEDY_LABEL, "heldout_accuracy"), +1)
        text += (f"; held-out accuracy {r.fmt('grpo', 'heldout_accuracy')} against greedy decoding's "
                 f"{r.fmt(GREEDY_LABEL, 'heldout_accuracy')} (learned beyond sharpening: {sharp.word})")
    return Verdict(combine(checks), text + ".", checks)


def verdict_regularization(r: Results) -> Verdict:
    checks, parts = [], []
    for arm in ("entropy-adaptive", "entropy-aer"):
        if not r.has(arm, "grpo"):
            continue
        idle = _acting(r, arm, "coef_acting", "coef_mean", f"a coefficient >= {ACTING_COEF:g}")
        if idle:
            checks.append(idle)
        target = r.mean(arm, "entropy_target")
        checks += [
            directional(f"{arm} ends with more entropy than GRPO", r.diff(arm, "grpo", "entropy_final"), +1),
            equivalent(f"{arm} ends at its target (final - target, margin 20% of the target)",
                       r.change(arm, "entropy_final", "entropy_target"), 0.2 * target),
            directional(f"{arm}'s held-out accuracy is above GRPO's", r.diff(arm, "grpo", "heldout_accuracy"), +1),
        ]
        parts.append(f"{arm} ends at {r.fmt(arm, 'entropy_final')} nats against its target {target:.3f} and GRPO's "
                     f"{r.fmt('grpo', 'entropy_final')}; coefficient applied {r.fmt(arm, 'coef_mean')} on average, "
                     f">= {ACTING_COEF:g} on {r.mean(arm, 'coef_acting'):.0%} of steps")
    if not checks:
        return Verdict("not run", "no controller arm has results.")
    return Verdict(combine(checks), "; ".join(parts) + ".", checks)


def verdict_positive_tokens(r: Results) -> Verdict:
    if not r.has("grpo"):
        return Verdict("not run", "the grpo arm has no results.")
    checks, parts = [], []
    fixed = r.frame.get("reference_entropy_digit", pd.Series(dtype=float)).notna().any()
    for arm, direction, what in (("adv-nonneg", -1, "advantage >= 0 tokens only lowers"),
                                 ("adv-nonpos", +1, "advantage <= 0 tokens only raises")):
        if not r.has(arm):
            continue
        checks.append(directional(f"training on {what} entropy (training entropy ratio against GRPO's)",
                                  r.diff(arm, "grpo", "entropy_ratio"), direction))
        if fixed:
            for kind in ("digit", "other"):
                checks.append(directional(f"training on {what} entropy on fixed contexts ({kind} positions)",
                                          r.diff(arm, "grpo", f"reference_entropy_{kind}"), direction))
    if r.has("par-0.5"):
        checks.append(directional("lambda = 0.5 keeps more entropy than lambda = 1 (ratio)",
                                  r.diff("par-0.5", "grpo", "entropy_ratio"), +1))
    if r.has("par-entropy-guided"):
        idle = _acting(r, "par-entropy-guided", "lambda_acting", "lambda_mean", f"lambda <= {ACTING_LAMBDA:g}")
        if idle:
            checks.append(idle)
        checks.append(directional("entropy-guided PAR keeps more entropy than GRPO (ratio)",
                                  r.diff("par-entropy-guided", "grpo", "entropy_ratio"), +1))
        parts.append(f"entropy-guided PAR's threshold {r.fmt('par-entropy-guided', 'par_threshold')} nats, lambda "
                     f"{r.fmt('par-entropy-guided', 'lambda_mean')} on average, <= {ACTING_LAMBDA:g} on "
                     f"{r.mean('par-entropy-guided', 'lambda_acting'):.0%} of steps")
    if not checks:
        return Verdict("not run", "no token-weighting arm has results.")
    arms = [a for a in ("adv-nonneg", "grpo", "adv-nonpos", "par-0.5", "par-entropy-guided") if r.has(a)]
    parts.insert(0, "entropy ratio (final / initial): " + ", ".join(f"{a} {r.fmt(a, 'entropy_ratio')}" for a in arms))
    return Verdict(combine(checks), "; ".join(parts) + ".", checks)


def verdict_offpolicy(r: Results) -> Verdict:
    arms = [a.name for a in ARMS if a.question == 4 and r.has(a.name)]
    if not arms or not r.has("grpo"):
        return Verdict("not run", "the off-policy arms have no results.")
    checks, parts = [], []
    for arm in arms:
        checks += [
            directional(f"{arm} ends with a higher training reward than GRPO", r.diff(arm, "grpo", "reward_final"), +1),
            at_most(f"{arm}'s in-domain held-out accuracy is not higher", r.diff(arm, "grpo", "heldout_accuracy"),
                    LEVEL_MARGIN),
        ]
        if r.frame["ood_accuracy"].notna().any():
            checks.append(at_most(f"{arm}'s out-of-domain accuracy is not higher", r.diff(arm, "grpo", "ood_accuracy"),
                                  LEVEL_MARGIN))
        parts.append(f"{arm}: final training reward {r.fmt(arm, 'reward_final')} vs GRPO's {r.fmt('grpo', 'reward_final')}, "
                     f"held-out accuracy {r.fmt(arm, 'heldout_accuracy')} vs {r.fmt('grpo', 'heldout_accuracy')}, "
                     f"out of domain {r.fmt(arm, 'ood_accuracy')} vs {r.fmt('grpo', 'ood_accuracy')}")
    return Verdict(combine(checks), "; ".join(parts) + ".", checks)


def verdict_clipping(r: Results) -> Verdict:
    ref = REFERENCE["clip-higher"]
    share = r.mean("offpolicy-4", "pos_clipped_high_share") if r.has("offpolicy-4") else math.nan
    measured = ("" if math.isnan(share) else
                f"offpolicy-4 (symmetric clip at 1.2) cut {share:.2%} of its positive-advantage tokens at the upper "
                f"bound, so clip-higher's window (1.2, 1.28] holds at most that share")
    if not r.has(ref, "clip-higher"):
        why = (f"; below the {Q5_MIN_SHARE:.0%} worth running the 16-update clipping arms for" if share < Q5_MIN_SHARE
               else "; enough to run them: `--arms clip-higher,clip-lower`") if measured else ""
        return Verdict("not run", (measured or f"the clipping arms (and {ref}) have no results") + why + ".")
    checks = [directional(f"clip-higher ends with more entropy than {ref} (the same updates, symmetric clip)",
                          r.diff("clip-higher", ref, "entropy_final"), +1)]
    text = (f"final entropy {r.fmt('clip-higher', 'entropy_final')} with clip-higher, {r.fmt(ref, 'entropy_final')} "
            f"with the symmetric clip" + (f"; {measured}" if measured else ""))
    return Verdict(combine(checks), text + ".", checks)


def verdict_data(r: Results) -> Verdict:
    if not r.has("grpo", "data-full"):
        return Verdict("not run", "the data arms have no results.")
    checks = [equivalent(f"100 k-means prompts x 8 epochs match the full split seen once (held-out accuracy, "
                         f"margin {MATCH_MARGIN:g})", r.diff("grpo", "data-full", "heldout_accuracy"), MATCH_MARGIN)]
    parts = [f"held-out accuracy {r.fmt('grpo', 'heldout_accuracy')} on the k-means subset vs "
             f"{r.fmt('data-full', 'heldout_accuracy')} on the full split"]
    if r.has("data-one-cluster"):
        checks.append(directional("100 prompts of one cluster collapse entropy faster than the k-means subset (ratio)",
                                  r.diff("data-one-cluster", "grpo", "entropy_ratio"), -1))
    for arm in ("data-one-cluster", "data-random"):
        if r.has(arm):
            parts.append(f"{arm}: entropy ratio {r.fmt(arm, 'entropy_ratio')} vs {r.fmt('grpo', 'entropy_ratio')}, "
                         f"held-out accuracy {r.fmt(arm, 'heldout_accuracy')}")
    return Verdict(combine(checks), "; ".join(parts) + ".", checks)


def verdict_spearman(spear: pd.DataFrame) -> Verdict:
    if not len(spear):
        return Verdict("not run", "no evaluation of a trained arm.")
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
    return Verdict("holds" if strength == "weak" else "does not hold", text)


def verdict_remedies(r: Results) -> Verdict:
    arms = [a for a in REMEDY_ARMS if r.has(a, REFERENCE[a])]
    if not arms:
        return Verdict("not run", "no remedy arm ran (they are outside the default run: `--arms clip-cov,...`).")
    checks, parts = [], []
    for arm in arms:
        ref = REFERENCE[arm]
        checks += [directional(f"{arm} ends with more entropy than {ref}", r.diff(arm, ref, "entropy_final"), +1),
                   at_least(f"{arm} loses no held-out accuracy against {ref}", r.diff(arm, ref, "heldout_accuracy"),
                            -LEVEL_MARGIN)]
        parts.append(f"{arm} ends at {r.fmt(arm, 'entropy_final')} nats ({ref}: {r.fmt(ref, 'entropy_final')}), "
                     f"held-out accuracy {r.fmt(arm, 'heldout_accuracy')} ({ref}: {r.fmt(ref, 'heldout_accuracy')})")
    return Verdict(combine(checks), "each against the arm with its update schedule: " + "; ".join(parts) + ".", checks)
