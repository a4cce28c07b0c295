"""The GRPO objective against hand-computed and brute-force references."""

from __future__ import annotations

import math

import pytest
import torch

from training.objective import PolicyOptions, clipped_surrogate, grpo_loss, k3_kl, policy_token_weights

EPS_LOW, EPS_HIGH = 0.2, 0.28


def brute_force_loss(logp, old, adv, mask, *, lam=1.0, token_filter="all", coefs=None, ent=None, ref=None, beta=0.0):
    """Token-by-token Python reference of the documented objective (token mean over the batch)."""
    total, count = 0.0, 0
    for i in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            if not mask[i, t]:
                continue
            count += 1
            a = float(adv[i])
            r = math.exp(float(logp[i, t]) - float(old[i, t]))
            surrogate = -min(r * a, min(max(r, 1 - EPS_LOW), 1 + EPS_HIGH) * a)
            w = lam if a > 0 else 1.0
            if (token_filter == "nonneg" and a < 0) or (token_filter == "nonpos" and a > 0):
                w = 0.0
            total += w * surrogate
            if beta:
                d = float(ref[i, t]) - float(logp[i, t])
                total += beta * (math.exp(d) - d - 1)
            if coefs is not None:
                total -= float(coefs[i]) * float(ent[i, t])
    return total / count


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(4, 6, generator=g, dtype=torch.float64) * 3
    old = logp + 0.4 * torch.randn(4, 6, generator=g, dtype=torch.float64)
    adv = torch.tensor([1.5, -0.7, 0.0, 0.3], dtype=torch.float64)
    mask = torch.tensor(
        [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.float64
    )
    ent = torch.rand(4, 6, generator=g, dtype=torch.float64) * 2
    ref = logp + 0.3 * torch.randn(4, 6, generator=g, dtype=torch.float64)
    return logp, old, adv, mask, ent, ref


def test_lambda_one_equals_plain_clipped_surrogate(batch):
    logp, old, adv, mask, _, _ = batch
    out = grpo_loss(logp, old, adv, mask, eps_low=EPS_LOW, eps_high=EPS_HIGH, par_lambda=1.0)
    assert out.loss.item() == pytest.approx(brute_force_loss(logp, old, adv, mask), rel=1e-12)
    # TRL's formula, written out: -min(r A, clip(r) A), token mean
    r = torch.exp(logp - old)
    a = adv.unsqueeze(1)
    trl = (-torch.min(r * a, torch.clamp(r, 1 - EPS_LOW, 1 + EPS_HIGH) * a) * mask).sum() / mask.sum()
    assert out.loss.item() == pytest.approx(trl.item(), rel=1e-12)


@pytest.mark.parametrize("lam", [0.0, 0.35, 1.0])
def test_par_matches_brute_force_and_scaled_positive_advantages(batch, lam):
    logp, old, adv, mask, _, _ = batch
    out = grpo_loss(logp, old, adv, mask, eps_low=EPS_LOW, eps_high=EPS_HIGH, par_lambda=lam)
    assert out.loss.item() == pytest.approx(brute_force_loss(logp, old, adv, mask, lam=lam), rel=1e-12, abs=1e-15)
    # For lambda >= 0, reweighting the loss equals scaling the positive advantages by lambda.
    scaled = torch.where(adv > 0, adv * lam, adv)
    plain = grpo_loss(logp, old, scaled, mask, eps_low=EPS_LOW, eps_high=EPS_HIGH)
    assert out.loss.item() == pytest.approx(plain.loss.item(), rel=1e-12, abs=1e-15)


def test_lambda_zero_removes_gradient_of_positive_advantage_tokens_only(batch):
    logp, old, adv, mask, _, _ = batch
    grads = {}
    for lam in (0.0, 1.0):
        x = logp.clone().requires_grad_(True)
        grpo_loss(x, old, adv, mask, eps_low=EPS_LOW, eps_high=EPS_HIGH, par_lambda=lam).loss.backward()
        grads[lam] = x.grad
    positive = (adv > 0).unsqueeze(1).expand_as(mask) & mask.bool()
    assert torch.all(grads[0.0][positive] == 0)
    assert torch.any(grads[1.0][positive] != 0)
    assert torch.equal(grads[0.0][~positive], grads[1.0][~positive])


def test_clip_bounds_cut_gradients_outside_the_trust_region():
    # One token per sequence; ratio r = exp(logp - old) chosen on each side of the bounds.
    ratios = torch.tensor([1.25, 1.35, 0.85, 0.75, 1.35, 0.75], dtype=torch.float64)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, -1.0, 1.0], dtype=torch.float64)
    old = torch.zeros(6, 1, dtype=torch.float64)
    x = torch.log(ratios).unsqueeze(1).requires_grad_(True)
    mask = torch.ones(6, 1, dtype=torch.float64)
    out = grpo_loss(x, old, adv, mask, eps_low=EPS_LOW, eps_high=EPS_HIGH)
    out.loss.backward()
    g = x.grad.squeeze(1) * 6  # undo the token mean
    # d(-rA)/dlogp = -rA inside the region; zero where the clipped branch is taken
    expected = torch.tensor([-1.25, 0.0, 0.85, 0.0, 1.35, -0.75], dtype=torch.float64)
    torch.testing.assert_close(g, expected)
    # clip-higher: 1.25 is inside [0.8, 1.28] but outside a symmetric 0.2 bound
    assert out.clipped_high.squeeze(1).tolist() == [False, True, False, False, False, False]
    assert out.clipped_low.squeeze(1).tolist() == [False, False, False, True, False, False]
    x2 = torch.log(ratios[:1]).unsqueeze(1).requires_grad_(True)
    grpo_loss(x2, old[:1], adv[:1], mask[:1], eps_low=0.2, eps_high=0.2).loss.backward()
    assert x2.grad.item() == 0.0


def test_token_mean_aggregation_weights_tokens_not_sequences():
    # Two sequences of 1 and 3 tokens, all with ratio 1: per-token loss = -A.
    logp = torch.zeros(2, 3, dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]], dtype=torch.float64)
    out = grpo_loss(logp, logp, adv, mask, eps_low=EPS_LOW, eps_high=EPS_HIGH)
    assert out.loss.item() == pytest.approx((-1.0 + 3 * 1.0) / 4)  # not the sequence mean (-1 + 1) / 2 = 0


def test_micro_batches_with_the_step_normalizer_sum_to_the_full_batch_loss(batch):
    logp, old, adv, mask, ent, _ = batch
    full = grpo_loss(logp, old, adv, mask, eps_low=EPS_LOW, eps_high=EPS_HIGH, entropies=ent, entropy_coefs=0.1)
    n = mask.sum()
    parts = [
        grpo_loss(
            logp[s], old[s], adv[s], mask[s], eps_low=EPS_LOW, eps_high=EPS_HIGH, entropies=ent[s],
            entropy_coefs=0.1, normalizer=n,
        ).loss
        for s in (slice(0, 1), slice(1, 4))
    ]
    assert sum(parts).item() == pytest.approx(full.loss.item(), rel=1e-12)


def test_padding_tokens_do_not_count(batch):
    logp, old, adv, mask, _, _ = batch
    garbage = logp.clone()
    garbage[mask == 0] = 50.0
    a = grpo_loss(logp, old, adv, mask, eps_low=EPS_LOW, eps_high=EPS_HIGH).loss
    b = grpo_loss(garbage, old, adv, mask, eps_low=EPS_LOW, eps_high=EPS_HIGH).loss
    assert a.item() == pytest.approx(b.item(), rel=1e-12)


def test_entropy_bonus_sign_and_per_sequence_coefficients(batch):
    logp, old, adv, mask, ent, _ = batch
    coefs = torch.tensor([0.1, 0.0, 0.3, 0.05], dtype=torch.float64)
    h = ent.clone().requires_grad_(True)
    out = grpo_loss(logp, old, adv, mask, eps_low=EPS_LOW, eps_high=EPS_HIGH, entropies=h, entropy_coefs=coefs)
    out.loss.backward()
    # d loss / d H_it = -c_i / N on unmasked tokens: descending the loss raises entropy
    expected = -(coefs.unsqueeze(1) * mask) / mask.sum()
    torch.testing.assert_close(h.grad, expected)
    ref = brute_force_loss(logp, old, adv, mask, coefs=coefs, ent=ent)
    assert out.loss.item() == pytest.approx(ref, rel=1e-12)
    no_bonus = grpo_loss(logp, old, adv, mask, eps_low=EPS_LOW, eps_high=EPS_HIGH)
    assert out.loss.item() < no_bonus.loss.item()
    assert out.entropy_bonus.item() == pytest.approx(no_bonus.loss.item() - out.loss.item(), rel=1e-12)


@pytest.mark.parametrize("token_filter", ["nonneg", "nonpos"])
def test_token_filter_trains_only_one_advantage_sign(batch, token_filter):
    logp, old, adv, mask, _, _ = batch
    x = logp.clone().requires_grad_(True)
    out = grpo_loss(x, old, adv, mask, eps_low=EPS_LOW, eps_high=EPS_HIGH, token_filter=token_filter)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(
        brute_force_loss(logp, old, adv, mask, token_filter=token_filter), rel=1e-12
    )
    dropped = (adv < 0) if token_filter == "nonneg" else (adv > 0)
    kept = (adv > 0) if token_filter == "nonneg" else (adv < 0)
    assert torch.all(x.grad[dropped] == 0)
    assert torch.any(x.grad[kept] != 0)


def test_kl_term_is_k3_and_weighted_by_beta(batch):
    logp, old, adv, mask, _, ref = batch
    out = grpo_loss(logp, old, adv, mask, eps_low=EPS_LOW, eps_high=EPS_HIGH, ref_logp=ref, beta=0.04)
    assert out.loss.item() == pytest.approx(brute_force_loss(logp, old, adv, mask, ref=ref, beta=0.04), rel=1e-12)
    assert torch.all(k3_kl(logp, ref) >= 0)
    assert torch.all(k3_kl(logp, logp) == 0)
    with pytest.raises(ValueError):
        grpo_loss(logp, old, adv, mask, eps_low=EPS_LOW, eps_high=EPS_HIGH, beta=0.1)


def test_importance_sampling_ratio_scales_the_policy_term(batch):
    logp, old, adv, mask, _, _ = batch
    base = grpo_loss(logp, old, adv, mask, eps_low=EPS_LOW, eps_high=EPS_HIGH).loss
    half = grpo_loss(logp, old, adv, mask, eps_low=EPS_LOW, eps_high=EPS_HIGH, is_ratio=torch.full_like(logp, 0.5))
    assert half.loss.item() == pytest.approx(0.5 * base.item(), rel=1e-12)


def test_weights_and_surrogate_helpers_validate():
    adv = torch.tensor([2.0, 0.0, -1.0])
    assert policy_token_weights(adv, 0.25).squeeze(1).tolist() == [0.25, 1.0, 1.0]
    assert policy_token_weights(adv, 1.0, "nonpos").squeeze(1).tolist() == [0.0, 1.0, 1.0]
    with pytest.raises(ValueError):
        policy_token_weights(adv, 1.5)
    with pytest.raises(ValueError):
        policy_token_weights(adv, 0.5, "positive")
    loss, ratio = clipped_surrogate(torch.zeros(1, 1), torch.zeros(1, 1), torch.tensor([3.0]), 0.2, 0.28)
    assert ratio.item() == 1.0 and loss.item() == -3.0


# ---- covariance-based arms, high-entropy tokens, signed advantages, zero-variance groups (hand-computed)

from training.objective import (  # noqa: E402
    clip_cov_selection,
    kl_cov_selection,
    logp_adv_cov,
    signed_advantages,
    token_covariance,
    top_entropy_mask,
    zero_variance_groups,
)

ADV2 = torch.tensor([1.0, -1.0])
MASK2 = torch.ones(2, 2, dtype=torch.bool)


def test_token_covariance_and_its_mean_by_hand():
    logp = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]])
    # mean logp -2.5, mean advantage 0: (1.5)(1), (0.5)(1), (-0.5)(-1), (-1.5)(-1)
    assert torch.allclose(token_covariance(logp, ADV2, MASK2), torch.tensor([[1.5, 0.5], [0.5, 1.5]]))
    assert logp_adv_cov(logp, ADV2, MASK2) == pytest.approx(1.0)
    masked = torch.tensor([[True, True], [True, False]])  # means -2 and 1/3 over three tokens
    cov = token_covariance(logp, ADV2, masked)
    assert cov[1, 1] == -math.inf
    assert torch.allclose(cov[masked], torch.tensor([1 * (2 / 3), 0.0, (-1.0) * (-4 / 3)]))
    assert math.isnan(logp_adv_cov(logp, ADV2, torch.zeros(2, 2, dtype=torch.bool)))


def test_clip_cov_drops_a_fraction_of_the_tokens_inside_the_bounds():
    logp = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]], requires_grad=True)
    cov = token_covariance(logp, ADV2, MASK2)
    none_cut = torch.zeros(2, 2, dtype=torch.bool)
    chosen = clip_cov_selection(cov, MASK2, none_cut, 0.5, (1.0, 5.0))
    assert chosen.tolist() == [[True, False], [False, True]]  # the two tokens of cov 1.5, 2 = 0.5 x 4 of them
    one = clip_cov_selection(cov, MASK2, none_cut, 0.01, (1.0, 5.0), torch.Generator().manual_seed(0))
    assert one.sum() == 1 and (one & chosen).sum() == 1  # at least one token, always from the eligible ones
    already = torch.tensor([[True, False], [False, False]])  # cut by the ratio clip: not eligible again
    assert clip_cov_selection(cov, MASK2, already, 0.5, (1.0, 5.0)).tolist() == [[False, False], [False, True]]

    out = grpo_loss(logp, logp.detach(), ADV2, MASK2, eps_low=0.2, eps_high=0.28,
                    policy=PolicyOptions(policy_loss="clip-cov", cov_fraction=0.5))
    # ratio 1: per-token -A = -1, -1, +1, +1; the loss of (0,0) and (1,1) is dropped
    assert out.loss.item() == pytest.approx((-1.0 + 1.0) / 4)
    out.loss.backward()
    assert logp.grad.tolist() == [[0.0, -0.25], [0.25, 0.0]]
    assert out.cov_selected.tolist() == chosen.tolist() and out.gradient_mask.tolist() == [[False, True], [True, False]]


def test_kl_cov_penalizes_the_largest_covariance_tokens_and_does_not_clip():
    logp = torch.tensor([[-1.0, -2.0], [-3.0, -5.0]], requires_grad=True)
    # mean -2.75: covariances 1.75, 0.75, 0.25, 2.25
    cov = token_covariance(logp, ADV2, MASK2)
    assert kl_cov_selection(cov, MASK2, 0.25).tolist() == [[False, False], [False, True]]
    assert kl_cov_selection(cov, MASK2, 0.5).tolist() == [[True, False], [False, True]]
    old = logp.detach() - 0.5  # ratio e^0.5 = 1.65, far above 1 + eps_high
    out = grpo_loss(logp, old, ADV2, MASK2, eps_low=0.2, eps_high=0.28,
                    policy=PolicyOptions(policy_loss="kl-cov", cov_fraction=0.25, kl_cov_coef=2.0))
    r = math.exp(0.5)
    assert out.loss.item() == pytest.approx((-r - r + r + r + 2.0 * 0.5) / 4)
    out.loss.backward()
    # unclipped: the positive-advantage tokens keep their gradient -A r / N; (1,1) adds coef * sign / N
    assert torch.allclose(logp.grad, torch.tensor([[-r / 4, -r / 4], [r / 4, (r + 2.0) / 4]]))
    assert not out.clipped_high.any() and out.gradient_mask.all()
    clipped = grpo_loss(logp, old, ADV2, MASK2, eps_low=0.2, eps_high=0.28)
    assert clipped.clipped_high[0].all() and not clipped.gradient_mask[0].any()


def test_high_entropy_tokens_keep_the_top_quantile_only():
    entropies = torch.tensor([[0.1, 0.9], [0.5, 0.3]])
    assert top_entropy_mask(entropies, MASK2, 0.5).tolist() == [[False, True], [True, False]]  # median 0.4
    assert top_entropy_mask(entropies, MASK2, 1.0).tolist() == MASK2.tolist()
    logp = torch.zeros(2, 2, requires_grad=True)
    out = grpo_loss(logp, logp.detach(), ADV2, MASK2, eps_low=0.2, eps_high=0.28, entropies=entropies,
                    policy=PolicyOptions(top_entropy_quantile=0.5))
    out.loss.backward()
    assert logp.grad.tolist() == [[0.0, -0.25], [0.25, 0.0]]  # token mean still over all 4 tokens
    with pytest.raises(ValueError, match="needs entropies"):
        grpo_loss(logp, logp.detach(), ADV2, MASK2, eps_low=0.2, eps_high=0.28,
                  policy=PolicyOptions(top_entropy_quantile=0.5))


def test_signed_advantages_and_zero_variance_groups():
    assert signed_advantages(torch.tensor([True, False, True])).tolist() == [1.0, -1.0, 1.0]
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    assert zero_variance_groups(rewards, 2).tolist() == [True, True, False, False, True, True]
    assert zero_variance_groups(torch.tensor([float("nan"), float("nan")]), 2).tolist() == [False, False]
