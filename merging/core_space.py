"""Core Space merging (arXiv 2509.17786): merge LoRA experts inside the small space their factors span.

Every expert's update dW_t = B_t A_t (scaling folded) lies in the column space of the stacked up-projections
[B_1 .. B_T] and the row space of the stacked down-projections [A_1; ..; A_T]. With orthonormal bases of
those spaces, U_B (d x R_B) and V_A (k x R_A), R <= T r, every expert is written without loss as

    dW_t = U_B M_t V_A^T,    M_t = (U_B^T B_t)(A_t V_A)    (its R_B x R_A core),

so a merge f of the dense updates can run on the cores instead: dW = U_B f(M_1, .., M_T) V_A^T, kept as a
LoRA of rank R_A (B = U_B f(M), A = V_A^T). Nothing d x k is ever formed: the bases come from SVDs of the
stacked factors, O((d + k) (T r)^2), and the inner merge works on (T r) x (T r) matrices.

Task arithmetic in the core is task arithmetic in full space, exactly. So are the spectral merges below,
because U_B and V_A have orthonormal columns: the SVD of dW_t is U_B times the SVD of M_t, and the nearest
orthogonal matrix of U_B X is U_B times that of X. Their "rank budget" (how many directions there are to
share) is the core's size R; in full space the same methods see min(d, k) directions, of which all but
T r are zero for LoRA experts.

Inner merges (``INNER``):

- ``tsv-m`` (Task Singular Vectors: Merge, arXiv 2412.00081): each task keeps its top R / T singular
  triplets; the concatenated left and right singular vectors are replaced by their nearest orthogonal
  matrices (the polar factor P Q^T of P Sigma Q^T) to remove interference; singular values kept.
- ``iso-cts`` (arXiv 2502.04959): the top ``common_fraction`` of the task-arithmetic sum's directions (the
  common subspace), plus, per task, its top directions after projecting the common subspace out, stacked,
  orthogonalized, and given one singular value, the mean of those kept (an isotropic spectrum).
- ``iso-c``: the task-arithmetic sum with its spectrum flattened to the mean singular value.
- ``task-arithmetic``: the weighted sum (what the other three start from; the exactness check).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from merging.lowrank import LoraFactors

#: Singular values below this fraction of the largest are treated as zero when building the bases: stacked
#: factors of experts that share directions (or padded ranks) would otherwise add noise dimensions.
BASIS_TOLERANCE = 1e-10


def _basis(stacked: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns spanning the columns of ``stacked`` (its thin SVD's left vectors, null part dropped)."""
    u, s, _ = torch.linalg.svd(stacked, full_matrices=False)
    keep = s > BASIS_TOLERANCE * s.max() if s.numel() and s.max() > 0 else s > 0
    return u[:, keep] if keep.any() else u[:, :1]


def core_bases(parts: Sequence[LoraFactors]) -> tuple[torch.Tensor, torch.Tensor]:
    """(U_B, V_A): orthonormal bases of the experts' stacked B's (d x R_B) and stacked A's rows (k x R_A)."""
    folded = [p.folded() for p in parts]
    return _basis(torch.cat([p.b for p in folded], dim=1)), _basis(torch.cat([p.a for p in folded], dim=0).T)


def cores(parts: Sequence[LoraFactors], u_b: torch.Tensor, v_a: torch.Tensor) -> list[torch.Tensor]:
    """Each expert's core M_t = (U_B^T B_t)(A_t V_A), R_B x R_A."""
    return [(u_b.T @ p.b) @ (p.a @ v_a) for p in (q.folded() for q in parts)]


def _polar(x: torch.Tensor) -> torch.Tensor:
    """The nearest matrix with orthonormal columns (or rows) to ``x``: P Q^T from x = P Sigma Q^T."""
    p, _, qh = torch.linalg.svd(x, full_matrices=False)
    return p @ qh


def task_arithmetic(mats: Sequence[torch.Tensor], **_: float) -> torch.Tensor:
    return torch.stack(list(mats)).sum(dim=0)


def _top_triplets(mats: Sequence[torch.Tensor], k: int, us: list, ss: list, vhs: list) -> None:
    """Append each matrix's top ``k`` singular triplets to ``us``, ``ss`` and ``vhs``."""
    for m in mats:
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
        us.append(u[:, :k])
        ss.append(s[:k])
        vhs.append(vh[:k])


def tsv_m(mats: Sequence[torch.Tensor], **_: float) -> torch.Tensor:
    """TSV-M: each task's top R / T singular triplets, the stacked vectors orthogonalized, values kept."""
    per_task = min(mats[0].shape) // len(mats)
    if per_task < 1:
        raise ValueError(f"TSV-M needs at least one direction per task: a core of {min(mats[0].shape)} directions "
                         f"cannot be shared by {len(mats)} experts")
    us, ss, vhs = [], [], []
    _top_triplets(mats, per_task, us, ss, vhs)
    return _polar(torch.cat(us, dim=1)) @ torch.diag(torch.cat(ss)) @ _polar(torch.cat(vhs, dim=0))


def iso_c(mats: Sequence[torch.Tensor], **_: float) -> torch.Tensor:
    """Iso-C: the task-arithmetic sum with every singular value set to their mean."""
    u, s, vh = torch.linalg.svd(task_arithmetic(mats), full_matrices=False)
    return s.mean() * (u @ vh)


def iso_cts(mats: Sequence[torch.Tensor], common_fraction: float = 0.8, **_: float) -> torch.Tensor:
    """Iso-CTS: the sum's top common directions plus each task's own top directions outside them, isotropic."""
    size, n_tasks = min(mats[0].shape), len(mats)
    # The task-specific part is divisible by the number of tasks: every task gets as many directions.
    per_task = round((size - int(size * common_fraction)) / n_tasks)
    common = size - per_task * n_tasks
    if common < 0:
        per_task, common = size // n_tasks, size - (size // n_tasks) * n_tasks
    u, s, vh = torch.linalg.svd(task_arithmetic(mats), full_matrices=False)
    uc, sc, vhc = u[:, :common], s[:common], vh[:common]
    us, ss, vhs = [uc], [sc], [vhc]
    _top_triplets([m - uc @ (uc.T @ m) for m in mats], per_task, us, ss, vhs)
    return torch.cat(ss).mean() * (_polar(torch.cat(us, dim=1)) @ _polar(torch.cat(vhs, dim=0)))


#: Inner merges by name; each takes the weighted cores (and ``common_fraction``) and returns the merged core.
INNER: dict[str, Callable[..., torch.Tensor]] = {
    "tsv-m": tsv_m,
    "iso-cts": iso_cts,
    "iso-c": iso_c,
    "task-arithmetic": task_arithmetic,
}


def core_space(parts: Sequence[LoraFactors], *, inner: str = "tsv-m", scale: float = 1.0,
               weights: Sequence[float] | None = None, common_fraction: float = 0.8) -> LoraFactors:
    """The Core Space merge of one module's experts, as factors of rank R_A (scaling 1)."""
    if inner not in INNER:
        raise ValueError(f"Core Space merges its cores with one of {', '.join(INNER)}, not {inner!r}")
    weights = list(weights) if weights is not None else [1.0] * len(parts)
    if len(weights) != len(parts):
        raise ValueError(f"{len(weights)} weights for {len(parts)} experts")
    wide = [p.to(dtype=torch.float64) for p in parts]
    u_b, v_a = core_bases(wide)
    merged = INNER[inner]([w * m for w, m in zip(weights, cores(wide, u_b, v_a), strict=True)],
                          common_fraction=common_fraction)
    dtype = parts[0].a.dtype
    return LoraFactors(v_a.T.to(dtype).contiguous(), (scale * (u_b @ merged)).to(dtype).contiguous(), 1.0)
