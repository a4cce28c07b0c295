"""RobustMerge (arXiv 2502.17159) on one module's LoRA factors.

Two forms, both from the same pruning and row scales:

``robustmerge`` (the paper's Algorithm 1)
    delta = lam * sum_n c_n B~_n diag(S~_n) A~_n, with c_n the expert's alpha/r,
    held exactly as the rank N*r LoRA [c_1 B~_1 S~_1 | ... ] [A~_1; ...; A~_N].

``robustmerge_reference`` (the official code, ``load_and_merge_pretrained_model``)
    A* = lam * sum_n A~_n, B*[:, i] = lam * sum_n s_{n,i} B~_n[:, i] / sum_n s_{n,i},
    scales clamped from below per expert, delta = scale * c_1 B* A*: a rank r product
    of sums, with cross-task terms B~_n A~_m and lambda applied twice. ``scale`` (1 in
    the official code) multiplies B* only, so that a sweep over it moves the update
    linearly, as every other method's scale does (a sweep over lam would square it).

One deliberate departure from the official code: a row of A with no L1 mass left
after pruning (or none to begin with) gets scale 1 rather than inf / NaN. Its own
term is zero either way; the guard only stops it from zeroing (paper form) or
poisoning with NaN (code form) the other experts' share of that row.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from merging.lowrank import LoraFactors


def prune_each(stacked: torch.Tensor, keep: float) -> torch.Tensor:
    """``prune_by_magnitude`` applied to each slice ``stacked[n]`` with its own threshold.

    One batched selection for all experts: a single pass of kernels instead of N
    (what makes the factored merge cheap on GPUs and many-core CPUs).
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    flat = stacked.reshape(stacked.shape[0], -1)
    k = int(flat.shape[1] * (1 - keep))
    if k < 1:
        return stacked.clone()
    magnitude = flat.abs()
    threshold = magnitude.kthvalue(k, dim=1, keepdim=True).values
    return torch.where(magnitude >= threshold, flat, 0.0).reshape(stacked.shape)


def prune_by_magnitude(t: torch.Tensor, keep: float) -> torch.Tensor:
    """Zero all but the largest-magnitude entries of ``t``.

    Keeps entries with ``|w| >= `` the floor(n * (1 - keep))-th smallest ``|w|``
    (1-based), the official code's rule: ties at the threshold are kept, so
    slightly more than ``keep * n`` entries may survive. When that index is 0
    (keep = 1, or a tensor too small to prune) nothing is pruned.
    """
    return prune_each(t[None], keep)[0]


def row_scales(a: torch.Tensor, a_pruned: torch.Tensor) -> torch.Tensor:
    """s_i = ||A_i||_1 / ||A~_i||_1 per row of A (last dim summed), 1 where the pruned row is empty."""
    total = a.abs().sum(dim=-1)
    kept = a_pruned.abs().sum(dim=-1)
    safe = torch.where(kept > 0, kept, 1.0)
    return torch.where(kept > 0, total / safe, 1.0)


def _pruned(experts: Sequence[LoraFactors], keep: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stacked pruned A (N, r, k), pruned B (N, d, r) and row scales (N, r)."""
    ranks = {e.rank for e in experts}
    if len(ranks) != 1:
        raise ValueError(f"RobustMerge needs experts of equal rank, got ranks {sorted(ranks)}")
    a = torch.stack([e.a for e in experts])
    a_pruned = prune_each(a, keep)
    b_pruned = prune_each(torch.stack([e.b for e in experts]), keep)
    return a_pruned, b_pruned, row_scales(a, a_pruned)


def robustmerge(
    experts: Sequence[LoraFactors], keep: float = 0.2, lam: float = 2.0, normalize: bool = True
) -> LoraFactors:
    """Paper form: the exact rank N*r LoRA of lam * sum_n c_n B~_n diag(S~_n) A~_n (scaling 1)."""
    a_pruned, b_pruned, scales = _pruned(experts, keep)
    if normalize:
        # Every s >= 1, so the per-row sum over experts is >= N and never zero.
        scales = scales / scales.sum(dim=0, keepdim=True)
    coef = lam * torch.tensor([e.scaling for e in experts], dtype=scales.dtype, device=scales.device)
    b_scaled = b_pruned * (coef[:, None] * scales)[:, None, :]
    n, d, r = b_scaled.shape
    # [B_1 | ... | B_N] (d, N*r) over [A_1; ...; A_N] (N*r, k).
    b_cat = b_scaled.permute(1, 0, 2).reshape(d, n * r)
    a_cat = a_pruned.reshape(n * r, -1)
    return LoraFactors(a_cat, b_cat, 1.0)


def clamp_scales(scales: torch.Tensor, clamp_ratio: float) -> torch.Tensor:
    """Raise each expert's scales (N, r) to its own sorted value of index floor(r * (1 - clamp_ratio))."""
    r = scales.shape[1]
    index = min(int(r * (1 - clamp_ratio)), r - 1)
    floor = scales.sort(dim=1).values[:, index : index + 1]
    return torch.maximum(scales, floor)


def robustmerge_reference(
    experts: Sequence[LoraFactors], keep: float = 0.2, lam: float = 2.0, clamp_ratio: float = 0.2,
    scale: float = 1.0,
) -> LoraFactors:
    """Official code form: rank r LoRA scale * c_1 B* A* (product of sums; scaling of the first expert)."""
    a_pruned, b_pruned, scales = _pruned(experts, keep)
    scales = clamp_scales(scales, clamp_ratio)
    a_star = lam * a_pruned.sum(dim=0)
    b_star = scale * lam * (b_pruned * scales[:, None, :]).sum(dim=0) / scales.sum(dim=0)[None, :]
    return LoraFactors(a_star, b_star, experts[0].scaling)
