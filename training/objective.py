"""The GRPO objective with polymath's entropy control, as pure tensor functions.

Per completion token t of sequence i, with ratio r = exp(logp - old_logp) and
advantage A_i:

    policy_t  = -min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A) * w_t * is_t
    w_t       = lambda for A > 0 (positive-advantage reweighting), 1 otherwise,
                times 0 for the tokens the token filter drops
    loss      = [sum_t policy_t + beta * sum_t kl_t - sum_t c_i * H_t] / N

summed over unmasked tokens, N the token count of the whole optimizer step's
batch (token-mean aggregation, DAPO), kl_t the k3 estimator against the
reference policy, H_t the token entropy (differentiable) and c_i a
per-sequence entropy coefficient. is_t is vLLM's importance-sampling
correction when rollouts came from vLLM.

The trainer (training/grpo.py) only gathers tensors and calls ``grpo_loss``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TOKEN_FILTERS = ("all", "nonneg", "nonpos")


@dataclass
class ObjectiveOutput:
    """The loss to backpropagate and the detached pieces the trainer logs."""

    loss: torch.Tensor
    """Scalar, differentiable."""
    policy_loss: torch.Tensor
    """Detached sum of the policy term divided by the normalizer."""
    entropy_bonus: torch.Tensor
    """Detached sum of c_i * H_t divided by the normalizer (subtracted from the loss)."""
    kl: torch.Tensor | None
    """Detached per-token k3 KL (B, T), None without a reference."""
    ratio: torch.Tensor
    """Detached importance ratio r, (B, T)."""
    clipped_low: torch.Tensor
    """Bool (B, T): r < 1 - eps_low on a negative-advantage token (its gradient is cut)."""
    clipped_high: torch.Tensor
    """Bool (B, T): r > 1 + eps_high on a positive-advantage token (its gradient is cut)."""


def _as_token_advantages(advantages: torch.Tensor) -> torch.Tensor:
    return advantages.unsqueeze(1) if advantages.dim() == 1 else advantages


def clipped_surrogate(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, eps_low: float, eps_high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO/GRPO clipped surrogate loss -min(rA, clip(r)A) and the ratio r."""
    adv = _as_token_advantages(advantages)
    ratio = torch.exp(logp - old_logp)
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    return -torch.min(ratio * adv, clipped * adv), ratio


def policy_token_weights(advantages: torch.Tensor, par_lambda: float, token_filter: str = "all") -> torch.Tensor:
    """Multiplier of each token's policy loss: lambda on A > 0, 1 elsewhere, 0 where the filter drops it."""
    if token_filter not in TOKEN_FILTERS:
        raise ValueError(f"token_filter must be one of {TOKEN_FILTERS}, got {token_filter!r}")
    if not 0.0 <= par_lambda <= 1.0:
        raise ValueError(f"par_lambda must lie in [0, 1], got {par_lambda}")
    adv = _as_token_advantages(advantages)
    dtype = adv.dtype if adv.is_floating_point() else torch.float32
    weights = torch.where(adv > 0, torch.full_like(adv, par_lambda, dtype=dtype), torch.ones_like(adv, dtype=dtype))
    if token_filter == "nonneg":
        weights = weights * (adv >= 0)
    elif token_filter == "nonpos":
        weights = weights * (adv <= 0)
    return weights


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || pi_ref): exp(ref - logp) - (ref - logp) - 1 (always >= 0)."""
    diff = ref_logp - logp
    return torch.exp(diff) - diff - 1.0


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float,
    eps_high: float,
    par_lambda: float = 1.0,
    token_filter: str = "all",
    entropies: torch.Tensor | None = None,
    entropy_coefs: torch.Tensor | float | None = None,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    is_ratio: torch.Tensor | None = None,
    normalizer: torch.Tensor | float | None = None,
) -> ObjectiveOutput:
    """The token-mean clipped GRPO loss with PAR, token filter, entropy bonus and KL.

    Shapes: logp, old_logp, mask, entropies, ref_logp (B, T); advantages (B,)
    or (B, T); entropy_coefs a float or (B,) per-sequence coefficients;
    is_ratio (B, T) or (B, 1). ``normalizer`` is the token count the sums are
    divided by; default: this batch's unmasked tokens. Pass the whole step's
    count when the step is split into micro-batches, so the sum of their
    losses is the token mean over the step.
    """
    mask = mask.to(logp.dtype)
    adv = _as_token_advantages(advantages).to(logp.dtype)
    per_token, ratio = clipped_surrogate(logp, old_logp, adv, eps_low, eps_high)
    per_token = per_token * policy_token_weights(adv, par_lambda, token_filter).to(logp.dtype)
    if is_ratio is not None:
        per_token = per_token * is_ratio
    if normalizer is None:
        normalizer = mask.sum().clamp(min=1.0)
    policy_sum = (per_token * mask).sum()
    loss_sum = policy_sum

    kl = None
    if beta != 0.0:
        if ref_logp is None:
            raise ValueError("beta != 0 needs ref_logp")
        kl = k3_kl(logp, ref_logp)
        loss_sum = loss_sum + beta * (kl * mask).sum()

    bonus_sum = logp.new_zeros(())
    if entropy_coefs is not None:
        if entropies is None:
            raise ValueError("entropy_coefs given without entropies")
        coefs = entropy_coefs
        if isinstance(coefs, torch.Tensor) and coefs.dim() == 1:
            coefs = coefs.unsqueeze(1)
        bonus_sum = (coefs * entropies * mask).sum()
        loss_sum = loss_sum - bonus_sum

    with torch.no_grad():
        ratio_d = ratio.detach()
        clipped_low = (ratio_d < 1.0 - eps_low) & (adv < 0)
        clipped_high = (ratio_d > 1.0 + eps_high) & (adv > 0)
    return ObjectiveOutput(
        loss=loss_sum / normalizer,
        policy_loss=(policy_sum / normalizer).detach(),
        entropy_bonus=(bonus_sum / normalizer).detach(),
        kl=None if kl is None else kl.detach(),
        ratio=ratio_d,
        clipped_low=clipped_low,
        clipped_high=clipped_high,
    )
