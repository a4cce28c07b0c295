"""Paired comparisons of the entropy experiment's arms over training seeds, and the rules that turn them into
verdicts.

Seed s of every arm samples the same first rollouts from the same model, so arms are compared pairwise per
seed: d_s = a_s - b_s over the seeds both ran, and the 95% interval is mean(d) +- t(0.975, n - 1) sd(d) / sqrt(n).
Each seed's value already carries its own evaluation's sampling noise, so the interval covers both the
training seed and the test sample. A row without a training run (the base model, sampled or greedy) is one
number: the comparison is the arm's one-sample t interval less that number. With one seed there is no
interval and every rule answers "inconclusive".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
from scipy import stats

LEVEL = 0.95

HOLDS, FAILS, INCONCLUSIVE, DID_NOT_ACT = "holds", "does not hold", "inconclusive", "did not act"


@dataclass(frozen=True)
class Difference:
    """mean(a - b) of ``metric`` over ``n`` paired seeds, with its t interval (NaN bounds: fewer than 2 seeds)."""

    a: str
    b: str
    metric: str
    mean: float
    low: float
    high: float
    n: int

    @property
    def sign(self) -> int:
        """+1 when the interval lies above 0, -1 below, 0 when it holds 0 or there is none."""
        if math.isnan(self.low) or math.isnan(self.high):
            return 0
        return 1 if self.low > 0 else -1 if self.high < 0 else 0

    def text(self, digits: int = 3) -> str:
        if math.isnan(self.low):
            return f"{self.mean:+.{digits}f} (n = {self.n}: no interval)"
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}] (n = {self.n})"


def paired_difference(values: pd.DataFrame, a: str, b: str, metric: str, constant: set[str] = frozenset()) -> Difference:
    """a - b of ``metric`` from ``values`` (one row per arm and seed: columns arm, seed, metric), paired by seed;
    an arm in ``constant`` is a single number subtracted from (or from which is subtracted) every seed of the other."""
    col_a = values.loc[values.arm == a].set_index("seed")[metric].dropna()
    col_b = values.loc[values.arm == b].set_index("seed")[metric].dropna()
    if b in constant:
        d = col_a - float(col_b.iloc[0]) if len(col_b) else col_a.iloc[:0]
    elif a in constant:
        d = (float(col_a.iloc[0]) - col_b) if len(col_a) else col_b.iloc[:0]
    else:
        d = (col_a - col_b.reindex(col_a.index)).dropna()
    return paired_values(a, b, metric, d)


def paired_values(a: str, b: str, metric: str, d: pd.Series) -> Difference:
    """The t interval of the mean of the per-seed differences ``d``."""
    n = len(d)
    if n == 0:
        return Difference(a, b, metric, math.nan, math.nan, math.nan, 0)
    mean = float(d.mean())
    if n < 2:
        return Difference(a, b, metric, mean, math.nan, math.nan, n)
    half = float(stats.t.ppf(0.5 + LEVEL / 2, n - 1)) * float(d.std(ddof=1)) / math.sqrt(n)
    return Difference(a, b, metric, mean, mean - half, mean + half, n)


@dataclass(frozen=True)
class Check:
    """One claim of a question, the difference that tests it and the rule applied."""

    claim: str
    diff: Difference
    rule: str
    word: str

    def row(self) -> dict:
        return {"claim": self.claim, "difference": self.diff.text(), "rule": self.rule, "verdict": self.word}


def directional(claim: str, diff: Difference, direction: int) -> Check:
    """The claim holds when the interval lies on the side of 0 that ``direction`` (+1 above, -1 below) states,
    does not hold when it lies on the other side, and is inconclusive when it holds 0."""
    side = "above" if direction > 0 else "below"
    rule = f"holds if the 95% interval lies {side} 0"
    word = HOLDS if diff.sign == direction else FAILS if diff.sign == -direction else INCONCLUSIVE
    return Check(claim, diff, rule, word)


def at_most(claim: str, diff: Difference, margin: float) -> Check:
    """A "not higher" claim: holds when the interval's upper end is at most ``margin``, does not hold when the
    interval lies above 0, inconclusive otherwise."""
    rule = f"holds if the 95% interval's upper end is at most {margin:.3g}, fails if it lies above 0"
    if math.isnan(diff.high):
        word = INCONCLUSIVE
    else:
        word = HOLDS if diff.high <= margin else FAILS if diff.sign > 0 else INCONCLUSIVE
    return Check(claim, diff, rule, word)


def at_least(claim: str, diff: Difference, margin: float) -> Check:
    """A "no loss" claim (``margin`` <= 0): holds when the interval's lower end is at least ``margin``, does not
    hold when the interval lies below 0, inconclusive otherwise."""
    rule = f"holds if the 95% interval's lower end is at least {margin:.3g}, fails if it lies below 0"
    if math.isnan(diff.low):
        word = INCONCLUSIVE
    else:
        word = HOLDS if diff.low >= margin else FAILS if diff.sign < 0 else INCONCLUSIVE
    return Check(claim, diff, rule, word)


def equivalent(claim: str, diff: Difference, margin: float) -> Check:
    """A "matches" claim: holds when the whole interval lies within +-margin, does not hold when it excludes 0,
    inconclusive otherwise (an interval too wide to decide)."""
    rule = f"holds if the 95% interval lies within +-{margin:.3g}, fails if it excludes 0"
    if math.isnan(diff.low):
        word = INCONCLUSIVE
    elif -margin <= diff.low and diff.high <= margin:
        word = HOLDS
    elif diff.sign != 0:
        word = FAILS
    else:
        word = INCONCLUSIVE
    return Check(claim, diff, rule, word)


def combine(checks: list[Check]) -> str:
    """A question's verdict from its checks: holds when every check holds, does not hold when every decided
    check fails, partly when some hold and some fail, inconclusive when none is decided; a controller that did
    not act makes the whole question "did not act"."""
    words = [c.word for c in checks]
    if not words:
        return "not run"
    if DID_NOT_ACT in words:
        return DID_NOT_ACT
    if all(w == HOLDS for w in words):
        return HOLDS
    decided = [w for w in words if w in (HOLDS, FAILS)]
    if not decided:
        return INCONCLUSIVE
    if all(w == FAILS for w in decided):
        return FAILS
    if all(w == HOLDS for w in decided):
        return f"partly ({len(decided)} of {len(words)} hold, the rest inconclusive)"
    return "partly"
