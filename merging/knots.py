"""KnOTS (arXiv 2410.19735): align the experts' LoRA updates in one shared SVD basis, merge the aligned parts.

The column-wise concatenation of the N updates of a module has a thin SVD

    [dW_1, ..., dW_N] = U S [V_1^T, ..., V_N^T],    dW_n = U (S V_n^T),

so every expert is written in the same left basis U, and its task-specific part is the R x k block S V_n^T
(R = sum of the ranks). As the official code does (gstoica27/KnOTS, ``task_merger.py``), the merged objects
are those scaled blocks, so that a magnitude trim ranks entries by their real size, and the result is
rebuilt as dW = U merge(S V_n^T) * scale. Merges of the blocks:

- ``ties``: trim each task to its top ``density`` entries by magnitude, elect a sign per entry (the sign of
  the sum; an entry whose sum is 0 takes the majority sign), average the entries that agree (disjoint mean).
  ``density`` 1 is the official LLM configuration (no trim: sign election and disjoint mean only).
- ``dare``: drop each entry with probability 1 - ``density`` and rescale by 1 / ``density``, then the same
  sign election and disjoint mean, untrimmed (the official "dare" flag on a TIES merge with topK 100).

``trim: task`` (the official scope) ranks a task's entries over every module at once, as the official code
does with its single parameter vector per task; ``trim: module`` ranks them module by module. The majority
sign for zero sums is taken over the same scope.

All of it runs in the factor space, never forming a d x k matrix. With dW_n = B_n A_n,

    [dW_1, ..., dW_N] = [B_1 .. B_N] blockdiag(A_1, .., A_N) = Q_B R_B blockdiag(R_1^T, .., R_N^T) blockdiag(Q_n^T)

from a QR of the stacked B's (d x R) and of each A_n^T (k x r_n). The SVD of the R x R core
R_B blockdiag(R_n^T) = U_c S V_c^T gives U = Q_B U_c, and V_n^T = V_c^T[:, block n] Q_n^T (R x k). The
merged update has rank <= R: B = U (d x R), A = merge(S V_n^T) * scale (R x k).

Departures from the official code, deliberate: each expert's alpha / r is folded in (the official code reads
the raw factors); everything is computed in float64 (the official code goes back to float32 after the SVD);
per-expert ``weights`` multiply the blocks before the trim, as they do in the TIES baseline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from merging.lowrank import LoraFactors

#: Singular values at or below this are dropped from the shared basis (the official code's support cut).
SUPPORT = 1e-5


def aligned_blocks(parts: Sequence[LoraFactors]) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """(U, S, [V_n^T]) of the concatenated updates, from the factors alone (components with s <= SUPPORT
    dropped)."""
    folded = [p.folded() for p in parts]
    qb, rb = torch.linalg.qr(torch.cat([p.b for p in folded], dim=1))
    qs, rs = zip(*(torch.linalg.qr(p.a.T) for p in folded))
    core = rb @ torch.block_diag(*[r.T for r in rs])
    uc, s, vch = torch.linalg.svd(core, full_matrices=False)
    support = s > SUPPORT
    uc, s, vch = uc[:, support], s[support], vch[support]
    blocks, start = [], 0
    for q, p in zip(qs, folded):
        blocks.append(vch[:, start : start + p.rank] @ q.T)
        start += p.rank
    return qb @ uc, s, blocks


def trim_threshold(values: torch.Tensor, density: float) -> float | None:
    """The magnitude at and above which a ``density`` share of ``values`` is kept (the official rule:
    the (n - floor(n * density))-th smallest magnitude); None when nothing is trimmed."""
    n = values.numel()
    k = n - int(n * density)
    if density >= 1.0 or k < 1:
        return None
    return values.abs().flatten().kthvalue(k).values.item()


def elect_and_average(blocks: Sequence[torch.Tensor], majority: float) -> torch.Tensor:
    """TIES's sign election and disjoint mean over equally shaped (trimmed) tensors; an entry whose values
    sum to 0 takes the sign ``majority``."""
    stacked = torch.stack(list(blocks))
    sign = torch.sign(stacked.sum(dim=0))
    sign = torch.where(sign == 0, torch.full_like(sign, majority), sign)
    agree = torch.where(sign > 0, stacked > 0, stacked < 0)
    count = agree.sum(dim=0).clamp(min=1)
    return (stacked * agree).sum(dim=0) / count


def _majority(blocks_per_module: Sequence[Sequence[torch.Tensor]]) -> float:
    """The sign of the sum of the elected signs over the given modules (the official ``majority`` rule)."""
    total = sum(torch.sign(torch.stack(list(bs)).sum(dim=0)).sum().item() for bs in blocks_per_module)
    return 1.0 if total >= 0 else -1.0


def knots_merge(modules: Mapping[str, Sequence[LoraFactors]], *, merge: str = "ties", density: float = 1.0,
                scale: float = 1.0, weights: Sequence[float] | None = None, seed: int = 0,
                trim: str = "task") -> dict[str, LoraFactors]:
    """The KnOTS merge of every module's experts (module -> the experts' factors), as factors (scaling 1)."""
    if merge not in ("ties", "dare"):
        raise ValueError(f"KnOTS merges its aligned blocks with 'ties' or 'dare', not {merge!r}")
    if trim not in ("task", "module"):
        raise ValueError(f"KnOTS trims per 'task' (over every module) or per 'module', not {trim!r}")
    names = list(modules)
    n_experts = len(modules[names[0]])
    weights = list(weights) if weights is not None else [1.0] * n_experts
    bases, blocks = {}, {}
    for name in names:
        u, s, vs = aligned_blocks([p.to(dtype=torch.float64) for p in modules[name]])
        bases[name] = u
        blocks[name] = [w * (s[:, None] * v) for w, v in zip(weights, vs, strict=True)]
    if merge == "dare":
        generator = torch.Generator(device=blocks[names[0]][0].device).manual_seed(seed)
        for t in range(n_experts):  # one stream over the experts, then the modules, as the official code draws
            for name in names:
                b = blocks[name][t]
                keep = torch.rand(b.shape, generator=generator, device=b.device, dtype=b.dtype) < density
                blocks[name][t] = b * keep / density
    scopes = [names] if trim == "task" else [[name] for name in names]
    if merge == "ties":
        for scope in scopes:
            for t in range(n_experts):
                threshold = trim_threshold(torch.cat([blocks[name][t].flatten() for name in scope]), density)
                if threshold is not None:
                    for name in scope:
                        b = blocks[name][t]
                        blocks[name][t] = torch.where(b.abs() >= threshold, b, torch.zeros_like(b))
    out = {}
    for scope in scopes:
        majority = _majority([blocks[name] for name in scope])
        for name in scope:
            merged = elect_and_average(blocks[name], majority)
            dtype = modules[name][0].a.dtype
            out[name] = LoraFactors((merged * scale).to(dtype).contiguous(), bases[name].to(dtype).contiguous(), 1.0)
    return out


def knots(parts: Sequence[LoraFactors], **options) -> LoraFactors:
    """The KnOTS merge of one module's experts (``knots_merge`` on a single module)."""
    return knots_merge({"module": parts}, **options)["module"]
