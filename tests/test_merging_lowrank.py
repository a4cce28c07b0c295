"""Factored LoRA algebra against dense matrices."""

from __future__ import annotations

import math

import pytest
import torch

from merging.lowrank import LoraFactors, concat, cosine, frobenius_norm, inner, pad_rank, truncate


def rand_lora(d: int, k: int, r: int, seed: int, scaling: float = 1.0) -> LoraFactors:
    g = torch.Generator().manual_seed(seed)
    return LoraFactors(
        torch.randn(r, k, generator=g, dtype=torch.float64),
        torch.randn(d, r, generator=g, dtype=torch.float64),
        scaling,
    )


def rel_err(x: torch.Tensor, y: torch.Tensor) -> float:
    return (torch.linalg.norm(x - y) / torch.linalg.norm(y)).item()


def test_inner_norm_cosine_match_dense():
    x = rand_lora(40, 24, 3, seed=0, scaling=0.5)
    y = rand_lora(40, 24, 5, seed=1, scaling=2.0)
    dx, dy = x.dense(), y.dense()
    assert inner(x, y) == pytest.approx((dx * dy).sum().item(), rel=1e-10)
    assert frobenius_norm(x) == pytest.approx(torch.linalg.norm(dx).item(), rel=1e-10)
    dense_cos = ((dx * dy).sum() / (torch.linalg.norm(dx) * torch.linalg.norm(dy))).item()
    assert cosine(x, y) == pytest.approx(dense_cos, rel=1e-9, abs=1e-12)
    assert cosine(x, x) == pytest.approx(1.0, rel=1e-12)


def test_cosine_of_correlated_updates():
    x = rand_lora(30, 20, 4, seed=2)
    noise = rand_lora(30, 20, 4, seed=3, scaling=0.1)
    y = concat([x, noise])
    dense = ((x.dense() * y.dense()).sum() / (x.dense().norm() * y.dense().norm())).item()
    assert cosine(x, y) == pytest.approx(dense, rel=1e-9)
    assert 0.9 < cosine(x, y) < 1.0


def test_cosine_with_zero_update_is_zero():
    x = rand_lora(10, 8, 2, seed=4)
    zero = LoraFactors(torch.zeros(2, 8, dtype=torch.float64), torch.zeros(10, 2, dtype=torch.float64))
    assert cosine(x, zero) == 0.0
    assert frobenius_norm(zero) == 0.0


def test_concat_is_exact_sum():
    parts = [rand_lora(20, 12, r, seed=s, scaling=sc) for r, s, sc in [(2, 5, 0.5), (3, 6, 4.0), (1, 7, 1.0)]]
    merged = concat(parts)
    assert merged.rank == 6 and merged.scaling == 1.0
    assert rel_err(merged.dense(), sum(p.dense() for p in parts)) <= 1e-12


def test_pad_rank_keeps_update():
    x = rand_lora(9, 7, 2, seed=8, scaling=3.0)
    padded = pad_rank(x, 5)
    assert padded.rank == 5
    assert rel_err(padded.dense(), x.dense()) <= 1e-12
    with pytest.raises(ValueError):
        pad_rank(x, 1)


def dense_truncated(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, float]:
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    approx = (u[:, :rank] * s[:rank]) @ vh[:rank]
    return approx, math.sqrt((s[rank:] ** 2).sum().item() / (s**2).sum().item())


@pytest.mark.parametrize(("d", "k", "r", "rank"), [(60, 40, 12, 5), (8, 50, 12, 3), (50, 6, 12, 4)])
def test_truncate_matches_dense_svd(d, k, r, rank):
    x = rand_lora(d, k, r, seed=d + k, scaling=0.25)
    approx, error = truncate(x, rank)
    expected, expected_error = dense_truncated(x.dense(), rank)
    assert approx.rank == rank and approx.shape == (d, k)
    assert rel_err(approx.dense(), expected) <= 1e-5
    assert error == pytest.approx(expected_error, rel=1e-8)


def test_truncate_balances_singular_values():
    x = rand_lora(30, 20, 6, seed=11)
    approx, _ = truncate(x, 3)
    # B = U sqrt(S) and A = sqrt(S) V^T: column norms of B equal row norms of A.
    assert torch.allclose(approx.b.norm(dim=0), approx.a.norm(dim=1), rtol=1e-10)


def test_truncate_at_or_above_rank_is_exact():
    x = rand_lora(15, 10, 4, seed=12, scaling=2.0)
    same, error = truncate(x, 4)
    assert error == 0.0 and same.scaling == 1.0
    assert rel_err(same.dense(), x.dense()) <= 1e-12
    with pytest.raises(ValueError):
        truncate(x, 0)


def test_factors_must_chain():
    with pytest.raises(ValueError, match="do not chain"):
        LoraFactors(torch.zeros(3, 5), torch.zeros(4, 2))
