"""KnOTS in the factor space against a dense transcription of the paper's procedure."""

from __future__ import annotations

import pytest
import torch

from merging.knots import aligned_blocks, dare_blocks, knots, ties_blocks
from merging.lowrank import LoraFactors


def _experts(n=3, d=40, k=24, r=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [LoraFactors(torch.randn(r, k, generator=g, dtype=torch.float64),
                        torch.randn(d, r, generator=g, dtype=torch.float64), scaling=0.5 + i) for i in range(n)]


def _dense_knots(parts, merge, density, scale, weights, seed=0):
    """The paper's procedure on dense matrices: SVD of [dW_1 .. dW_N], merge the V_n^T blocks, map back."""
    dense = [p.dense() for p in parts]
    u, s, vh = torch.linalg.svd(torch.cat(dense, dim=1), full_matrices=False)
    rank = sum(p.rank for p in parts)
    u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    k = dense[0].shape[1]
    blocks = [vh[:, i * k : (i + 1) * k] for i in range(len(parts))]
    if merge == "ties":
        merged = ties_blocks(blocks, density, weights)
    else:
        merged = dare_blocks(blocks, density, weights, torch.Generator().manual_seed(seed))
    return u @ torch.diag(s) @ merged * scale


def _rel(x, y):
    return (torch.linalg.norm(x - y) / torch.linalg.norm(y)).item()


def test_aligned_blocks_reconstruct_every_expert():
    parts = _experts()
    u, s, blocks = aligned_blocks(parts)
    assert u.shape == (40, 12) and blocks[0].shape == (12, 24)
    assert torch.allclose(u.T @ u, torch.eye(12, dtype=u.dtype), atol=1e-10)
    for p, v in zip(parts, blocks):
        assert _rel(u @ torch.diag(s) @ v, p.dense()) < 1e-10


@pytest.mark.parametrize("merge,density", [("ties", 0.2), ("ties", 1.0), ("dare", 0.5)])
def test_factor_space_knots_matches_the_dense_reference(merge, density):
    parts = _experts(seed=3)
    weights = [1.0, 0.5, 2.0]
    merged = knots(parts, merge=merge, density=density, scale=1.5, weights=weights, seed=7)
    expected = _dense_knots(parts, merge, density, 1.5, weights, seed=7)
    assert merged.rank == 12 and merged.shape == (40, 24)
    assert _rel(merged.dense(), expected) <= 1e-5


def test_ties_blocks_by_hand():
    a = torch.tensor([[3.0, -1.0], [0.5, 2.0]])
    b = torch.tensor([[-1.0, -2.0], [1.5, -4.0]])
    # density 0.5 keeps the top 2 of 4 magnitudes per block: a -> [[3, 0], [0, 2]], b -> [[0, -2], [0, -4]]
    # elected signs: [+, -], [0 -> none, -]; means of agreeing entries
    out = ties_blocks([a, b], 0.5, [1.0, 1.0])
    assert torch.equal(out, torch.tensor([[3.0, -2.0], [0.0, -4.0]]))


def test_dense_equivalence_at_full_density_and_one_expert():
    [p] = _experts(n=1, seed=5)
    assert _rel(knots([p], density=1.0).dense(), p.dense()) < 1e-10
