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
    "pos_adv_token_frac",
    "clip_frac_low",
    "clip_frac_high",
    "cov_token_frac",
    "logp_adv_cov",
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
    """Running sums over the micro-batches of one optimizer step."""

    def __init__(self):
        self.entropies: list[torch.Tensor] = []
        self.entropy_sum = 0.0
        self.tokens = 0.0
        self.clipped_low = torch.zeros(())
        self.clipped_high = torch.zeros(())
        self.positive = torch.zeros(())
        self.kl: torch.Tensor | None = None
        self.is_corrected: torch.Tensor | None = None  # tokens whose vLLM importance ratio was capped or masked
        self.coefs: list[float] = []
        # Moments of (logp, advantage) over the tokens that carry policy gradient, for their covariance.
        self.n = torch.zeros((), dtype=torch.float64)
        self.sum_logp = torch.zeros((), dtype=torch.float64)
        self.sum_adv = torch.zeros((), dtype=torch.float64)
        self.sum_logp_adv = torch.zeros((), dtype=torch.float64)
        self.selected = torch.zeros((), dtype=torch.float64)

    def add(self, *, entropies, entropy_sum, tokens, clipped_low, clipped_high, positive, coef, kl,
            selected=None, logp=None, adv=None, is_corrected=None) -> None:
        self.entropies.append(entropies.float())
        # entropy_sum and tokens are already reduced across processes.
        self.entropy_sum += entropy_sum.item()
        self.tokens += tokens.item()
        device = clipped_low.device
        self.clipped_low = self.clipped_low.to(device) + clipped_low
        self.clipped_high = self.clipped_high.to(device) + clipped_high
        self.positive = self.positive.to(device) + positive
        if kl is not None:
            self.kl = kl if self.kl is None else self.kl + kl
        if is_corrected is not None:
            self.is_corrected = is_corrected if self.is_corrected is None else self.is_corrected + is_corrected
        self.coefs.append(coef)
        if selected is not None:
            self.selected = self.selected + selected.detach().double().cpu()
        if logp is not None and logp.numel():
            x, a = logp.detach().double().cpu(), adv.detach().double().cpu()
            self.n = self.n + x.numel()
            self.sum_logp = self.sum_logp + x.sum()
            self.sum_adv = self.sum_adv + a.sum()
            self.sum_logp_adv = self.sum_logp_adv + (x * a).sum()


def covariance(n: float, sum_x: float, sum_a: float, sum_xa: float) -> float:
    """Population covariance from the moments (NaN without tokens)."""
    if n <= 0:
        return math.nan
    return sum_xa / n - (sum_x / n) * (sum_a / n)


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


