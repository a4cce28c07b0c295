"""KnOTS in the factor space against a dense transcription of the official code's procedure."""

from __future__ import annotations

import pytest
import torch

from merging.knots import aligned_blocks, elect_and_average, knots, knots_merge, trim_threshold
from merging.lowrank import LoraFactors


def _experts(n=3, d=40, k=24, r=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [LoraFactors(torch.randn(r, k, generator=g, dtype=torch.float64),
                        torch.randn(d, r, generator=g, dtype=torch.float64), scaling=0.5 + i) for i in range(n)]


def _modules(seed=0):
    """Two modules of different shapes, three experts each."""
    return {"q": _experts(seed=seed), "o": _experts(d=24, k=32, r=2, seed=seed + 10)}


def _dense_knots(modules, merge, density, scale, weights, seed=0, trim="task"):
    """The official procedure on dense matrices: per module the SVD of [dW_1 .. dW_N]; the scaled blocks
    diag(s) V_n^T of every module concatenated into one vector per task; DARE (drop, rescale) or a top-density
    trim of that vector; signs elected per entry (zeros -> the vector's majority sign); disjoint mean; each
    module rebuilt as U @ merged * scale."""
    names = list(modules)
    per_module = {}
    for name in names:
        dense = [p.dense() for p in modules[name]]
        u, s, vh = torch.linalg.svd(torch.cat(dense, dim=1), full_matrices=False)
        keep = s > 1e-5
        u, s, vh = u[:, keep], s[:, None][keep], vh[keep]
        k = dense[0].shape[1]
        per_module[name] = (u, [w * s * vh[:, i * k : (i + 1) * k] for i, w in enumerate(weights)])
    groups = [names] if trim == "task" else [[n] for n in names]
    out = {}
    for group in groups:
        shapes = [per_module[n][1][0].shape for n in group]
        vectors = torch.stack([torch.cat([per_module[n][1][t].flatten() for n in group])
                               for t in range(len(weights))])
        if merge == "dare":
            g = torch.Generator().manual_seed(seed)
            vectors = torch.stack([torch.cat([
                (lambda b: b * (torch.rand(b.shape, generator=g, dtype=b.dtype) < density) / density)(
                    per_module[n][1][t]).flatten() for n in group]) for t in range(len(weights))])
        elif density < 1:
            size = vectors.shape[1]
            kth = vectors.abs().kthvalue(size - int(size * density), dim=1, keepdim=True).values
            vectors = vectors * (vectors.abs() >= kth)
        sign = torch.sign(vectors.sum(dim=0))
        sign[sign == 0] = 1.0 if torch.sign(sign.sum()) >= 0 else -1.0
        chosen = torch.where(sign > 0, vectors > 0, vectors < 0)
        merged = (vectors * chosen).sum(dim=0) / chosen.sum(dim=0).clamp(min=1)
        start = 0
        for n, shape in zip(group, shapes):
            size = shape[0] * shape[1]
            out[n] = per_module[n][0] @ merged[start : start + size].reshape(shape) * scale
            start += size
    return out


def _rel(x, y):
    return (torch.linalg.norm(x - y) / torch.linalg.norm(y)).item()


def test_aligned_blocks_reconstruct_every_expert():
    parts = _experts()
    u, s, blocks = aligned_blocks(parts)
    assert u.shape == (40, 12) and blocks[0].shape == (12, 24)
    assert torch.allclose(u.T @ u, torch.eye(12, dtype=u.dtype), atol=1e-10)
    for p, v in zip(parts, blocks):
        assert _rel(u @ torch.diag(s) @ v, p.dense()) < 1e-10


@pytest.mark.parametrize("merge,density,trim", [("ties", 0.2, "task"), ("ties", 0.2, "module"), ("ties", 1.0, "task"),
                                                ("dare", 0.5, "task")])
def test_factor_space_knots_matches_the_dense_reference(merge, density, trim):
    modules = _modules(seed=3)
    weights = [1.0, 0.5, 2.0]
    merged = knots_merge(modules, merge=merge, density=density, scale=1.5, weights=weights, seed=7, trim=trim)
    expected = _dense_knots(modules, merge, density, 1.5, weights, seed=7, trim=trim)
    assert merged["q"].rank == 12 and merged["q"].shape == (40, 24) and merged["o"].shape == (24, 32)
    for name in modules:
        assert _rel(merged[name].dense(), expected[name]) <= 1e-5


def test_the_trim_scope_changes_what_is_kept():
    modules = _modules(seed=4)
    by_task = knots_merge(modules, density=0.2, trim="task")
    by_module = knots_merge(modules, density=0.2, trim="module")
    assert _rel(by_task["o"].dense(), by_module["o"].dense()) > 1e-3


def test_sign_election_and_disjoint_mean_by_hand():
    a = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[0.0, -2.0], [0.0, -4.0]])
    # sums: [[3, -2], [0, -2]]: the zero sum takes the majority sign (+), which no entry there has
    assert torch.equal(elect_and_average([a, b], majority=1.0), torch.tensor([[3.0, -2.0], [0.0, -4.0]]))
    assert trim_threshold(torch.tensor([1.0, -4.0, 2.0, 3.0]), 0.5) == 2.0  # keeps |x| >= 2: -4, 2, 3
    assert trim_threshold(torch.tensor([1.0, 2.0]), 1.0) is None


def test_one_expert_untrimmed_is_the_expert():
    [p] = _experts(n=1, seed=5)
    assert _rel(knots([p], density=1.0).dense(), p.dense()) < 1e-10
