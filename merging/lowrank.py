"""Low-rank algebra on LoRA factors, never forming a dense d x k matrix.

A LoRA update is ``scaling * B @ A`` with ``A`` (r x k) and ``B`` (d x r). Sums of
such updates stay exact as one LoRA of the summed rank (concatenated factors);
inner products, norms and truncated SVDs cost O((d + k) r^2 + r^3) instead of
O(d k r) or O(d k min(d, k)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LoraFactors:
    """One module's LoRA update ``scaling * b @ a``."""

    a: torch.Tensor
    """Down projection, shape (r, k)."""
    b: torch.Tensor
    """Up projection, shape (d, r)."""
    scaling: float = 1.0
    """The adapter's alpha / r (alpha / sqrt(r) with rsLoRA) for this module."""

    def __post_init__(self) -> None:
        if self.a.ndim != 2 or self.b.ndim != 2 or self.a.shape[0] != self.b.shape[1]:
            raise ValueError(
                f"LoRA factors do not chain: A {tuple(self.a.shape)}, B {tuple(self.b.shape)} "
                "(need A (r, k) and B (d, r))"
            )

    @property
    def rank(self) -> int:
        return self.a.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        """Shape (d, k) of the dense update."""
        return self.b.shape[0], self.a.shape[1]

    def folded(self) -> LoraFactors:
        """The same update with the scaling moved into B (scaling 1)."""
        if self.scaling == 1.0:
            return self
        return LoraFactors(self.a, self.b * self.scaling, 1.0)

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> LoraFactors:
        return LoraFactors(self.a.to(device=device, dtype=dtype), self.b.to(device=device, dtype=dtype), self.scaling)

    def dense(self) -> torch.Tensor:
        """The d x k update; for tests and small modules only."""
        return self.scaling * (self.b @ self.a)


def concat(parts: Sequence[LoraFactors]) -> LoraFactors:
    """The exact sum of the updates as one LoRA of rank sum(r_n) (scalings folded into B)."""
    if not parts:
        raise ValueError("concat needs at least one LoRA")
    return LoraFactors(
        torch.cat([p.a for p in parts], dim=0),
        torch.cat([p.b * p.scaling for p in parts], dim=1),
        1.0,
    )


def pad_rank(x: LoraFactors, rank: int) -> LoraFactors:
    """The same update with zero rows/columns appended up to ``rank`` (scaling folded)."""
    x = x.folded()
    extra = rank - x.rank
    if extra < 0:
        raise ValueError(f"cannot pad a rank {x.rank} LoRA down to rank {rank}")
    if extra == 0:
        return x
    a = torch.cat([x.a, x.a.new_zeros(extra, x.a.shape[1])], dim=0)
    b = torch.cat([x.b, x.b.new_zeros(x.b.shape[0], extra)], dim=1)
    return LoraFactors(a, b, 1.0)


def inner(x: LoraFactors, y: LoraFactors) -> float:
    """Frobenius inner product <s_x B_x A_x, s_y B_y A_y> = s_x s_y trace((B_x^T B_y)(A_y A_x^T))."""
    bx, by = x.b.double(), y.b.double()
    ax, ay = x.a.double(), y.a.double()
    # trace(M N) for M = Bx^T By (rx x ry), N = Ay Ax^T (ry x rx) is sum(M * N^T).
    value = ((bx.T @ by) * (ax @ ay.T)).sum().item()
    return x.scaling * y.scaling * value


def frobenius_norm(x: LoraFactors) -> float:
    """||s B A||_F from the r x r Gram matrices."""
    return math.sqrt(max(inner(x, x), 0.0))


def cosine(x: LoraFactors, y: LoraFactors) -> float:
    """Cosine similarity of the two dense updates (0.0 when either is zero)."""
    nx, ny = frobenius_norm(x), frobenius_norm(y)
    if nx == 0.0 or ny == 0.0:
        return 0.0
    return inner(x, y) / (nx * ny)


def truncate(x: LoraFactors, rank: int) -> tuple[LoraFactors, float]:
    """Best rank-``rank`` approximation of the update and its relative Frobenius error.

    QR of B (d x R) and of A^T (k x R) reduces the SVD of B A to that of the
    R x R core R_B R_A^T; singular vectors map back through the Q factors. The
    singular values are split evenly between the two factors (sqrt on each side),
    which keeps them of similar magnitude for low-precision storage. A rank at or
    above the update's rank returns it unchanged (scaling folded) with error 0.
    """
    x = x.folded()
    if rank < 1:
        raise ValueError(f"target rank must be >= 1, got {rank}")
    if rank >= x.rank:
        return x, 0.0
    qb, rb = torch.linalg.qr(x.b)
    qa, ra = torch.linalg.qr(x.a.T)
    core = rb @ ra.T
    u, s, vh = torch.linalg.svd(core, full_matrices=False)
    kept = min(rank, s.numel())
    total = s.double().square().sum().item()
    tail = s[kept:].double().square().sum().item()
    root = s[:kept].sqrt()
    b = (qb @ u[:, :kept]) * root
    a = (root[:, None] * vh[:kept]) @ qa.T
    error = math.sqrt(tail / total) if total > 0 else 0.0
    return LoraFactors(a.contiguous(), b.contiguous(), 1.0), error
