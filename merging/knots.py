"""KnOTS (arXiv 2410.19735): align the experts' LoRA updates in one shared SVD basis, merge the aligned parts.

The column-wise concatenation of the N updates has a thin SVD

    [dW_1, ..., dW_N] = U S [V_1^T, ..., V_N^T],    dW_n = U S V_n^T,

so every expert is written in the same left basis U S, and its task-specific part is the R x k block V_n^T
(R = sum of the ranks). KnOTS merges those blocks with TIES (trim each to its top ``density`` entries by
magnitude, elect a sign per entry, average the agreeing entries) or DARE (drop entries at random, rescale
by 1 / density, sum), then maps back: dW = U S merge(V_n^T) * scale.

All of it runs in the factor space, never forming a d x k matrix. With dW_n = B_n A_n,

    [dW_1, ..., dW_N] = [B_1 .. B_N] blockdiag(A_1, .., A_N) = Q_B R_B blockdiag(R_1^T, .., R_N^T) blockdiag(Q_n^T)

from a QR of the stacked B's (d x R) and of each A_n^T (k x r_n). The SVD of the R x R core
R_B blockdiag(R_n^T) = U_c S V_c^T gives U = Q_B U_c, and V_n^T = V_c^T[:, block n] Q_n^T (R x k). The
merged update is exactly rank R: B = U S (d x R), A = merge(V_n^T) (R x k).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from merging.lowrank import LoraFactors


def aligned_blocks(parts: Sequence[LoraFactors]) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """(U, S, [V_n^T]) of the concatenated updates, from the factors alone."""
    folded = [p.folded() for p in parts]
    qb, rb = torch.linalg.qr(torch.cat([p.b for p in folded], dim=1))
    qs, rs = zip(*(torch.linalg.qr(p.a.T) for p in folded))
    core = rb @ torch.block_diag(*[r.T for r in rs])
    uc, s, vch = torch.linalg.svd(core, full_matrices=False)
    blocks, start = [], 0
    for q, p in zip(qs, folded):
        blocks.append(vch[:, start : start + p.rank] @ q.T)
        start += p.rank
    return qb @ uc, s, blocks


def ties_blocks(blocks: Sequence[torch.Tensor], density: float, weights: Sequence[float]) -> torch.Tensor:
    """TIES of equally shaped tensors: trim each to its top-density magnitudes, elect signs, disjoint mean."""
    trimmed = []
    for block, weight in zip(blocks, weights, strict=True):
        x = block * weight
        keep = max(1, round(density * x.numel()))
        if keep < x.numel():
            threshold = x.abs().flatten().kthvalue(x.numel() - keep + 1).values
            x = torch.where(x.abs() >= threshold, x, torch.zeros_like(x))
        trimmed.append(x)
    stacked = torch.stack(trimmed)
    sign = torch.sign(stacked.sum(dim=0))
    agree = (torch.sign(stacked) == sign) & (stacked != 0)
    count = agree.sum(dim=0).clamp(min=1)
    return (stacked * agree).sum(dim=0) / count


def dare_blocks(blocks: Sequence[torch.Tensor], density: float, weights: Sequence[float],
                generator: torch.Generator) -> torch.Tensor:
    """DARE of equally shaped tensors: keep each entry with probability density, rescale by 1 / density, sum."""
    out = torch.zeros_like(blocks[0])
    for block, weight in zip(blocks, weights, strict=True):
        mask = torch.rand(block.shape, generator=generator, device=block.device, dtype=block.dtype) < density
        out = out + weight * block * mask / density
    return out


def knots(parts: Sequence[LoraFactors], *, merge: str = "ties", density: float = 0.2, scale: float = 1.0,
          weights: Sequence[float] | None = None, seed: int = 0) -> LoraFactors:
    """The KnOTS merge of one module's experts, as rank-R factors (scaling 1)."""
    weights = list(weights) if weights is not None else [1.0] * len(parts)
    u, s, blocks = aligned_blocks([p.to(dtype=torch.float64) for p in parts])
    if merge == "ties":
        merged = ties_blocks(blocks, density, weights)
    elif merge == "dare":
        generator = torch.Generator(device=blocks[0].device).manual_seed(seed)
        merged = dare_blocks(blocks, density, weights, generator)
    else:
        raise ValueError(f"KnOTS merges its aligned blocks with 'ties' or 'dare', not {merge!r}")
    dtype = parts[0].a.dtype
    return LoraFactors((merged * scale).to(dtype).contiguous(), (u * s).to(dtype).contiguous(), 1.0)
