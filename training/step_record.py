"""One optimizer step's record: its metric names, the running sums it is made of, and how it is read back.

The trainer (training/grpo.py) sums over the micro-batches of a step in a :class:`StepWindow` and logs the
record under ``STEP_METRICS`` names into TRL's log; :func:`step_records` reads them from ``log_history``.
"""

from __future__ import annotations

import math

import torch

# Exactly the metric names every optimizer step records (steps.parquet / DuckDB train_steps).
STEP_METRICS = (
    "reward",
    "accuracy",
    "entropy",
    "entropy_p10",
    "entropy_p90",
    "entropy_coef",
    "entropy_target",
    "par_lambda",
    "par_threshold",
    "pos_adv_token_frac",
    "clip_frac_low",
    "clip_frac_high",
    "cov_token_frac",
    "logp_adv_cov",
    "logp_adv_cov_pos",
    "logp_adv_cov_neg",
    "zero_std_group_frac",
    "is_corrected_frac",
    "rollout_batches",
    "response_length",
    "grad_norm",
    "lr",
    "step_time",
)
# Names the record takes from Trainer/TRL's own log entries.
TRAINER_LOG_NAMES = {"grad_norm": "grad_norm", "lr": "learning_rate", "step_time": "step_time"}

class StepWindow:
    """Running sums over the micro-batches of one optimizer step, by name (``sums``), so that the trainer reduces
    them across processes in one call and reads them back by name."""

    #: Token counts and moments summed over the step; ``kl`` and ``is_corrected`` stay 0 where not measured.
    NAMES = ("loss_tokens", "clipped_low", "clipped_high", "positive", "kl", "is_corrected", "selected",
             *(f"{m}_{sign}" for sign in ("pos", "neg") for m in ("n", "sum_logp", "sum_adv", "sum_logp_adv")))

    def __init__(self):
        self.entropies: list[torch.Tensor] = []
        self.entropy_sum = 0.0
        self.tokens = 0.0
        self.coefs: list[float] = []
        self.measured: set[str] = set()
        self.sums = {name: torch.zeros((), dtype=torch.float64) for name in self.NAMES}

    def add(self, *, entropies, entropy_sum, tokens, coef, logp=None, adv=None, **counts) -> None:
        """One micro-batch: its entropies (already reduced across processes: ``entropy_sum``, ``tokens``), the
        coefficient applied, the (logp, advantage) pairs of the tokens carrying policy gradient, and token
        counts named as in ``NAMES`` (None: not measured)."""
        self.entropies.append(entropies.float())
        self.entropy_sum += entropy_sum.item()
        self.tokens += tokens.item()
        self.coefs.append(coef)
        for name, value in counts.items():
            if value is not None:
                self.sums[name] = self.sums[name] + value.detach().double().cpu()
                self.measured.add(name)
        if logp is not None and logp.numel():
            x, a = logp.detach().double().cpu(), adv.detach().double().cpu()
            # Moments per advantage sign: the step's covariance splits exactly into the two signs' shares.
            for sign, part in (("pos", a > 0), ("neg", a <= 0)):
                xs, as_ = x[part], a[part]
                self.sums[f"n_{sign}"] += xs.numel()
                self.sums[f"sum_logp_{sign}"] += xs.sum()
                self.sums[f"sum_adv_{sign}"] += as_.sum()
                self.sums[f"sum_logp_adv_{sign}"] += (xs * as_).sum()


def covariance_split(t: dict[str, float]) -> tuple[float, float, float]:
    """Cov(logp, A) over a step's gradient tokens and the shares of its positive- and non-positive-advantage
    tokens, sum over each sign of (logp - mean logp)(A - mean A) / n, which add up to it (NaN without tokens)."""
    n = t["n_pos"] + t["n_neg"]
    if n <= 0:
        return math.nan, math.nan, math.nan
    mean_x = (t["sum_logp_pos"] + t["sum_logp_neg"]) / n
    mean_a = (t["sum_adv_pos"] + t["sum_adv_neg"]) / n
    shares = [(t[f"sum_logp_adv_{s}"] - mean_a * t[f"sum_logp_{s}"] - mean_x * t[f"sum_adv_{s}"]
               + t[f"n_{s}"] * mean_x * mean_a) / n for s in ("pos", "neg")]
    return shares[0] + shares[1], shares[0], shares[1]


def step_records(log_history: list[dict]) -> list[dict[str, float]]:
    """The per-step records in a Trainer log history, keyed by STEP_METRICS names, plus ``step``."""
    records = []
    for entry in log_history:
        if "par_lambda" not in entry:
            continue
        row = {"step": int(entry["step"])}
        for name in STEP_METRICS:
            value = entry.get(TRAINER_LOG_NAMES.get(name, name))
            row[name] = math.nan if value is None else float(value)
        records.append(row)
    return records


