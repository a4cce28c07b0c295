"""RobustMerge: factored forms against dense and official-code transcriptions."""

from __future__ import annotations

import pytest
import torch

from merging.lowrank import LoraFactors, truncate
from merging.robustmerge import (
    clamp_scales,
    prune_by_magnitude,
    robustmerge,
    robustmerge_reference,
    row_scales,
)


def experts(n: int, d: int, k: int, r: int, seed: int, scalings=None) -> list[LoraFactors]:
    g = torch.Generator().manual_seed(seed)
    scalings = scalings or [2.0] * n
    return [
        LoraFactors(
            torch.randn(r, k, generator=g, dtype=torch.float64),
            torch.randn(d, r, generator=g, dtype=torch.float64) * 0.1,
            scalings[i],
        )
        for i in range(n)
    ]


def rel_err(x: torch.Tensor, y: torch.Tensor) -> float:
    return (torch.linalg.norm(x - y) / torch.linalg.norm(y)).item()


# --- dense reference of the paper form, written independently of merging.robustmerge ---


def dense_prune(t: torch.Tensor, keep: float) -> torch.Tensor:
    """Keep |w| >= the floor(n(1-keep))-th smallest |w| (1-based) via a full sort."""
    k = int(t.numel() * (1 - keep))
    if k < 1:
        return t.clone()
    threshold = torch.sort(t.abs().flatten()).values[k - 1]
    return t * (t.abs() >= threshold)


def dense_robustmerge(parts, keep, lam, normalize=True):
    n, r = len(parts), parts[0].rank
    scales = torch.empty(n, r, dtype=torch.float64)
    pruned = []
    for i, p in enumerate(parts):
        pa, pb = dense_prune(p.a, keep), dense_prune(p.b, keep)
        pruned.append((pa, pb))
        for row in range(r):
            kept = pa[row].abs().sum()
            scales[i, row] = p.a[row].abs().sum() / kept if kept > 0 else 1.0
    if normalize:
        scales = scales / scales.sum(dim=0)
    total = torch.zeros(parts[0].shape, dtype=torch.float64)
    for i, (p, (pa, pb)) in enumerate(zip(parts, pruned, strict=True)):
        total += p.scaling * pb @ torch.diag(scales[i]) @ pa
    return lam * total


def test_prune_keeps_the_largest_entries():
    t = torch.randn(16, 50, generator=torch.Generator().manual_seed(0))
    pruned = prune_by_magnitude(t, 0.2)
    kept = pruned != 0
    # 800 entries, threshold index floor(800 * 0.8) = 640: entries 640..800 (1-based) survive.
    assert kept.sum().item() == 800 - 640 + 1
    assert t.abs()[kept].min() >= t.abs()[~kept].max()
    assert torch.equal(pruned[kept], t[kept])
    assert torch.equal(prune_by_magnitude(t, 1.0), t)


def test_prune_keeps_ties_at_threshold():
    t = torch.tensor([[1.0, -3.0, 3.0, 0.5, 3.0]])
    # floor(5 * 0.4) = 2nd smallest |w| = 1.0: everything >= 1 survives.
    assert torch.equal(prune_by_magnitude(t, 0.6), torch.tensor([[1.0, -3.0, 3.0, 0.0, 3.0]]))


def test_row_scales_compensate_pruned_mass():
    a = torch.tensor([[4.0, -1.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 0.0]])
    pruned = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(row_scales(a, pruned), torch.tensor([5.0 / 4.0, 1.0, 1.0]))


@pytest.mark.parametrize("normalize", [True, False])
def test_paper_form_matches_dense(normalize):
    parts = experts(4, d=48, k=36, r=6, seed=1, scalings=[2.0, 0.5, 1.0, 4.0])
    merged = robustmerge(parts, keep=0.2, lam=2.0, normalize=normalize)
    assert merged.rank == 4 * 6
    assert rel_err(merged.dense(), dense_robustmerge(parts, 0.2, 2.0, normalize)) <= 1e-5


def test_paper_form_other_hyperparameters():
    parts = experts(3, d=20, k=30, r=4, seed=2)
    merged = robustmerge(parts, keep=0.5, lam=0.7)
    assert rel_err(merged.dense(), dense_robustmerge(parts, 0.5, 0.7)) <= 1e-5


def test_paper_form_without_pruning_is_lambda_times_mean():
    # keep = 1: every scale is 1, normalized to 1/N, so delta = lam / N * sum of updates.
    parts = experts(3, d=10, k=12, r=2, seed=3, scalings=[1.0, 2.0, 3.0])
    merged = robustmerge(parts, keep=1.0, lam=2.0)
    expected = 2.0 / 3.0 * sum(p.dense() for p in parts)
    assert rel_err(merged.dense(), expected) <= 1e-12


def test_compressed_paper_form_matches_dense_truncated_svd():
    parts = experts(4, d=64, k=40, r=6, seed=4)
    dense = dense_robustmerge(parts, 0.2, 2.0)
    compressed, error = truncate(robustmerge(parts, 0.2, 2.0), 6)
    u, s, vh = torch.linalg.svd(dense, full_matrices=False)
    expected = (u[:, :6] * s[:6]) @ vh[:6]
    assert compressed.rank == 6
    assert rel_err(compressed.dense(), expected) <= 1e-5
    assert error == pytest.approx(((s[6:] ** 2).sum() / (s**2).sum()).sqrt().item(), rel=1e-6)


def test_empty_pruned_row_stays_finite():
    parts = experts(2, d=8, k=10, r=3, seed=5)
    zero_row = parts[0].a.clone()
    zero_row[1] = 0.0
    parts[0] = LoraFactors(zero_row, parts[0].b, parts[0].scaling)
    assert torch.isfinite(robustmerge(parts).dense()).all()
    assert torch.isfinite(robustmerge_reference(parts).dense()).all()
    assert rel_err(robustmerge(parts).dense(), dense_robustmerge(parts, 0.2, 2.0)) <= 1e-5


def test_unequal_ranks_rejected():
    parts = experts(1, 8, 10, 3, seed=6) + experts(1, 8, 10, 4, seed=7)
    with pytest.raises(ValueError, match="equal rank"):
        robustmerge(parts)


# --- transcription of the official code (load_and_merge_pretrained_model) ---


def official_clamp(x, min_ratio=0, max_ratio=0):
    d = x.size(1)
    sorted_x, _ = torch.sort(x, dim=1)
    min_ = sorted_x[:, int(d * min_ratio)].unsqueeze(1)
    max_ = sorted_x[:, int(d * (1 - max_ratio) - 1)].unsqueeze(1)
    return torch.clamp(x, min_, max_)


def official_merge(lora_a: list, lora_b: list, mask_ratio=0.2, att_ratio=0.2, lam=2.0):
    fuse_weight = (torch.ones(len(lora_a), dtype=torch.float64) * lam)[:, None, None]
    merged = {}
    scale = None
    for name, params in (("lora_A", lora_a), ("lora_B", lora_b)):
        concat_model_weight = torch.stack(params)
        t, d1, d2 = concat_model_weight.shape
        concat_model_weight = concat_model_weight.reshape(-1, d1 * d2)
        kth_values, _ = concat_model_weight.abs().kthvalue(int(d1 * d2 * (1 - mask_ratio)), dim=1, keepdim=True)
        masks = (concat_model_weight.abs() >= kth_values).reshape(t, d1, d2)
        concat_model_weight = concat_model_weight.reshape(t, d1, d2)
        trimed_model_weights = masks * concat_model_weight
        if name == "lora_A":
            s_vector = torch.sum(abs(concat_model_weight), dim=-1) / torch.sum(abs(masks * concat_model_weight), dim=-1)
            scale = official_clamp(s_vector, 1 - att_ratio, 0)
            merged[name] = torch.sum(fuse_weight * trimed_model_weights, dim=0)
        else:
            merged[name] = torch.sum(fuse_weight * scale.unsqueeze(1) * trimed_model_weights, dim=0) / torch.sum(
                scale.unsqueeze(1), dim=0
            )
    return merged["lora_A"], merged["lora_B"]


@pytest.mark.parametrize(("n", "r", "keep", "clamp"), [(3, 8, 0.2, 0.2), (4, 16, 0.3, 0.5), (2, 5, 0.2, 0.2)])
def test_reference_form_matches_official_code(n, r, keep, clamp):
    parts = experts(n, d=40, k=24, r=r, seed=10 + r, scalings=[0.5] * n)
    a_star, b_star = official_merge([p.a for p in parts], [p.b for p in parts], keep, clamp, 2.0)
    merged = robustmerge_reference(parts, keep=keep, lam=2.0, clamp_ratio=clamp)
    assert merged.rank == r and merged.scaling == 0.5
    assert rel_err(merged.a, a_star) <= 1e-12
    assert rel_err(merged.b, b_star) <= 1e-12
    assert rel_err(merged.dense(), 0.5 * b_star @ a_star) <= 1e-5


def test_reference_form_is_a_product_of_sums():
    # With keep = 1 and clamp off every scale is 1: delta = c * lam^2 / N * (sum B)(sum A).
    parts = experts(3, d=12, k=9, r=4, seed=20, scalings=[1.5] * 3)
    merged = robustmerge_reference(parts, keep=1.0, lam=2.0, clamp_ratio=1.0)
    expected = 1.5 * 4.0 / 3.0 * sum(p.b for p in parts) @ sum(p.a for p in parts)
    assert rel_err(merged.dense(), expected) <= 1e-12


def test_clamp_raises_small_scales_only():
    scales = torch.tensor([[1.0, 5.0, 2.0, 3.0, 4.0], [2.0, 1.0, 1.0, 9.0, 1.5]])
    # index floor(5 * 0.8) = 4: the largest scale of each expert.
    assert torch.equal(clamp_scales(scales, 0.2), torch.tensor([[5.0] * 5, [9.0] * 5]))
    # index floor(5 * 0.4) = 2: the median.
    assert torch.equal(clamp_scales(scales, 0.6)[0], torch.tensor([3.0, 5.0, 3.0, 3.0, 4.0]))
    assert torch.equal(clamp_scales(scales, 1.0), scales)
