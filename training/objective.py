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

Variants of the policy term (``policy_loss``), from arXiv 2505.22617, with the per-token covariance
cov_t = (logp_t - mean logp) * (A_t - mean A) over the unmasked tokens:

    clip-cov: the clipped surrogate, with the loss of a random ``cov_fraction`` of the tokens whose cov_t
              lies in ``clip_cov_bounds`` (and that the ratio clip has not already cut) set to 0;
    kl-cov:   the unclipped -r * A, plus ``kl_cov_coef`` * |logp - old_logp| on the ``cov_fraction`` of
              tokens with the largest cov_t.

``top_entropy_quantile`` < 1 keeps the policy gradient only on the tokens whose entropy is at or above the
batch's (1 - q) quantile (arXiv 2506.01939; TRL's option of the same name). ``logp_adv_cov`` of the tokens
that carry policy gradient is the diagnostic that predicts the entropy change.

The trainer (training/grpo.py) only gathers tensors and calls ``grpo_loss``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TOKEN_FILTERS = ("all", "nonneg", "nonpos")
POLICY_LOSSES = ("clip", "clip-cov", "kl-cov")


@dataclass(frozen=True)
class PolicyOptions:
    """How the policy term and its advantages are formed (the ``train`` keys of the same names)."""

    policy_loss: str = "clip"
    cov_fraction: float = 2e-4
    clip_cov_bounds: tuple[float, float] = (1.0, 5.0)
    kl_cov_coef: float = 1.0
    top_entropy_quantile: float = 1.0
    advantage: str = "grpo"
    """grpo: TRL's group-normalized advantages; signed: +1 for a correct completion, -1 otherwise (REINFORCE
    on +-1 rewards; with PAR lambda < 1 on the positives, W-REINFORCE)."""
    drop_zero_variance_groups: bool = False
    """Remove the tokens of groups whose rewards are all equal from the loss and its token count."""

    def __post_init__(self) -> None:
        if self.policy_loss not in POLICY_LOSSES:
            raise ValueError(f"policy_loss must be one of {POLICY_LOSSES}, got {self.policy_loss!r}")


def signed_advantages(correct: torch.Tensor) -> torch.Tensor:
    """+1 for a correct completion, -1 for a wrong one."""
    return correct.float() * 2.0 - 1.0


def zero_variance_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Bool per completion: its group's rewards are all equal (no GRPO signal), ``rewards`` in group order."""
    grouped = rewards.view(-1, group_size)
    flat = (grouped == grouped[:, :1]).all(dim=1)
    return flat.repeat_interleave(group_size)


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
    cov_selected: torch.Tensor | None = None
    """Bool (B, T): the tokens clip-cov dropped or kl-cov penalized (None for ``clip``)."""
    gradient_mask: torch.Tensor | None = None
    """Bool (B, T): unmasked tokens whose policy term carries gradient (not clipped, filtered or dropped)."""


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


def token_covariance(logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(logp_t - mean logp) * (A_t - mean A), means over the unmasked tokens; -inf where masked (B, T)."""
    m = mask.bool()
    adv = _as_token_advantages(advantages).to(logp.dtype).expand_as(logp)
    lp = logp.detach()
    n = m.sum().clamp(min=1)
    centered = (lp - lp[m].sum() / n) * (adv - adv[m].sum() / n)
    return torch.where(m, centered, torch.full_like(centered, -torch.inf))


def logp_adv_cov(logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> float:
    """Covariance of log-probability and advantage over the tokens in ``mask`` (NaN when there are none)."""
    m = mask.bool()
    if not m.any():
        return float("nan")
    return float(token_covariance(logp, advantages, m)[m].mean())


def _selection_count(fraction: float, mask: torch.Tensor) -> int:
    return max(int(fraction * int(mask.sum())), 1)


def clip_cov_selection(cov: torch.Tensor, mask: torch.Tensor, already_clipped: torch.Tensor, fraction: float,
                       bounds: tuple[float, float], generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool (B, T): a random ``fraction`` of the unmasked tokens (at least one) among those with cov in the open
    interval ``bounds`` that the ratio clip has not cut already."""
    low, high = bounds
    eligible = (cov > low) & (cov < high) & mask.bool() & ~already_clipped
    candidates = eligible.flatten().nonzero().squeeze(1)
    chosen = torch.zeros(cov.numel(), dtype=torch.bool, device=cov.device)
    if candidates.numel():
        order = torch.randperm(candidates.numel(), generator=generator, device="cpu").to(cov.device)
        chosen[candidates[order[: _selection_count(fraction, mask)]]] = True
    return chosen.view_as(cov)


def kl_cov_selection(cov: torch.Tensor, mask: torch.Tensor, fraction: float) -> torch.Tensor:
    """Bool (B, T): the ``fraction`` of unmasked tokens (at least one) with the largest covariance."""
    k = min(_selection_count(fraction, mask), int(mask.bool().sum()))
    chosen = torch.zeros(cov.numel(), dtype=torch.bool, device=cov.device)
    if k:
        chosen[torch.topk(cov.flatten(), k).indices] = True
    return chosen.view_as(cov)


def top_entropy_mask(entropies: torch.Tensor, mask: torch.Tensor, quantile: float) -> torch.Tensor:
    """Bool (B, T): unmasked tokens whose entropy is at or above the (1 - ``quantile``) quantile of the batch's."""
    m = mask.bool()
    if quantile >= 1.0 or not m.any():
        return m
    threshold = torch.quantile(entropies.detach()[m].float(), 1.0 - quantile)
    return m & (entropies.detach() >= threshold.to(entropies.dtype))


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
    policy: PolicyOptions = PolicyOptions(),
    generator: torch.Generator | None = None,
) -> ObjectiveOutput:
    """The token-mean clipped GRPO loss with PAR, token filter, entropy bonus and KL; ``policy`` selects the
    policy term (module docstring for the ``policy_loss`` variants and ``top_entropy_quantile``); ``generator``
    draws clip-cov's random tokens.

    Shapes: logp, old_logp, mask, entropies, ref_logp (B, T); advantages (B,)
    or (B, T); entropy_coefs a float or (B,) per-sequence coefficients;
    is_ratio (B, T) or (B, 1). ``normalizer`` is the token count the sums are
    divided by; default: this batch's unmasked tokens. Pass the whole step's
    count when the step is split into micro-batches, so the sum of their
    losses is the token mean over the step.
    """
    policy_loss = policy.policy_loss
    bool_mask = mask.bool()
    mask = mask.to(logp.dtype)
    adv = _as_token_advantages(advantages).to(logp.dtype)
    per_token, ratio = clipped_surrogate(logp, old_logp, adv, eps_low, eps_high)
    weights = policy_token_weights(adv, par_lambda, token_filter).to(logp.dtype)
    if policy.top_entropy_quantile < 1.0:
        if entropies is None:
            raise ValueError("top_entropy_quantile < 1 needs entropies")
        weights = weights * top_entropy_mask(entropies, bool_mask, policy.top_entropy_quantile)
    with torch.no_grad():
        ratio_d = ratio.detach()
        clipped_low = (ratio_d < 1.0 - eps_low) & (adv < 0)
        clipped_high = (ratio_d > 1.0 + eps_high) & (adv > 0)
    if policy_loss == "kl-cov":  # KL-Cov replaces the ratio clip
        clipped_low, clipped_high = torch.zeros_like(clipped_low), torch.zeros_like(clipped_high)
    cut = clipped_low | clipped_high
    selected = None
    if policy_loss != "clip":
        cov = token_covariance(logp, adv, bool_mask)
        if policy_loss == "clip-cov":
            selected = clip_cov_selection(cov, bool_mask, cut, policy.cov_fraction, policy.clip_cov_bounds, generator)
            weights = weights * ~selected
        else:
            selected = kl_cov_selection(cov, bool_mask, policy.cov_fraction)
            per_token = -ratio * adv + policy.kl_cov_coef * (logp - old_logp).abs() * selected
    per_token = per_token * weights
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

    gradient_mask = bool_mask & (weights != 0) & ~cut
    return ObjectiveOutput(
        loss=loss_sum / normalizer,
        policy_loss=(policy_sum / normalizer).detach(),
        entropy_bonus=(bonus_sum / normalizer).detach(),
        kl=None if kl is None else kl.detach(),
        ratio=ratio_d,
        clipped_low=clipped_low,
        clipped_high=clipped_high,
        cov_selected=selected,
        gradient_mask=gradient_mask,
    )
