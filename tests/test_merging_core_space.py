"""Core Space merging in the factor space against dense transcriptions of TSV-M, Iso-C and Iso-CTS."""

from __future__ import annotations

import pytest
import torch

from merging.core_space import core_bases, core_space, cores
from merging.lowrank import LoraFactors


def _experts(n=4, d=48, k=40, r=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [LoraFactors(torch.randn(r, k, generator=g, dtype=torch.float64),
                        torch.randn(d, r, generator=g, dtype=torch.float64), scaling=0.5 + i) for i in range(n)]


def _rel(x, y):
    return (torch.linalg.norm(x - y) / torch.linalg.norm(y)).item()


def _orthogonalized(x):
    u, _, vh = torch.linalg.svd(x, full_matrices=False)
    return u @ vh


def _dense_tsv_m(dense, budget):
    """TSV-M as its paper states it, on the dense updates: top budget / T triplets per task, U and V replaced
    by their nearest orthogonal matrices, the singular values kept."""
    per_task = budget // len(dense)
    svds = [torch.linalg.svd(w, full_matrices=False) for w in dense]
    u = torch.cat([s[0][:, :per_task] for s in svds], dim=1)
    sig = torch.cat([s[1][:per_task] for s in svds])
    v = torch.cat([s[2][:per_task].T for s in svds], dim=1)
    return _orthogonalized(u) @ torch.diag(sig) @ _orthogonalized(v).T


def _dense_iso_c(dense, budget):
    """Iso-C: the sum's top ``budget`` directions (all a LoRA sum has), each with the mean singular value."""
    u, s, vh = torch.linalg.svd(sum(dense), full_matrices=False)
    return s[:budget].mean() * u[:, :budget] @ vh[:budget]


def _dense_iso_cts(dense, budget, common_fraction):
    """Iso-CTS: common directions of the sum, each task's top directions orthogonal to them, isotropic."""
    n = len(dense)
    per_task = round((budget - int(budget * common_fraction)) / n)
    common = budget - per_task * n
    u, s, vh = torch.linalg.svd(sum(dense), full_matrices=False)
    uc = u[:, :common]
    us, ss, vs = [uc], [s[:common]], [vh[:common].T]
    for w in dense:
        ut, st, vht = torch.linalg.svd(w - uc @ uc.T @ w, full_matrices=False)
        us.append(ut[:, :per_task])
        ss.append(st[:per_task])
        vs.append(vht[:per_task].T)
    mean = torch.cat(ss).mean()
    return mean * _orthogonalized(torch.cat(us, dim=1)) @ _orthogonalized(torch.cat(vs, dim=1)).T


def test_cores_rebuild_every_expert_exactly():
    parts = _experts()
    u_b, v_a = core_bases(parts)
    assert u_b.shape == (48, 16) and v_a.shape == (40, 16)
    for p, m in zip(parts, cores(parts, u_b, v_a)):
        assert m.shape == (16, 16)
        assert _rel(u_b @ m @ v_a.T, p.dense()) < 1e-12


def test_task_arithmetic_in_the_core_is_task_arithmetic():
    parts = _experts(seed=1)
    weights = [1.0, 0.5, 2.0, -0.3]
    merged = core_space(parts, inner="task-arithmetic", scale=0.7, weights=weights)
    expected = 0.7 * sum(w * p.dense() for w, p in zip(weights, parts))
    assert merged.rank == 16 and merged.shape == (48, 40)
    assert _rel(merged.dense(), expected) < 1e-12


@pytest.mark.parametrize("inner", ["tsv-m", "iso-c", "iso-cts"])
def test_spectral_merges_in_the_core_match_their_dense_transcription(inner):
    parts = _experts(seed=2)
    dense = [p.dense() for p in parts]
    budget = 16  # the core's size: four rank-4 experts
    expected = {"tsv-m": lambda: _dense_tsv_m(dense, budget), "iso-c": lambda: _dense_iso_c(dense, budget),
                "iso-cts": lambda: _dense_iso_cts(dense, budget, 0.8)}[inner]()
    merged = core_space(parts, inner=inner, scale=1.3)
    assert _rel(merged.dense(), 1.3 * expected) <= 1e-5


def test_float32_experts_stay_float32_and_within_tolerance():
    parts = [p.to(dtype=torch.float32) for p in _experts(seed=4)]
    merged = core_space(parts, inner="tsv-m")
    assert merged.a.dtype == torch.float32
    expected = _dense_tsv_m([p.to(dtype=torch.float64).dense() for p in parts], 16)
    assert _rel(merged.dense().double(), expected) <= 1e-5


def test_tsv_m_of_one_expert_is_the_expert_and_shared_directions_collapse():
    [p] = _experts(n=1, seed=5)
    assert _rel(core_space([p], inner="tsv-m").dense(), p.dense()) < 1e-10
    # two copies of one expert span one rank-4 space: the bases drop the duplicate directions
    u_b, v_a = core_bases([p, p])
    assert u_b.shape[1] == 4 and v_a.shape[1] == 4


def test_unknown_inner_merge_is_refused():
    with pytest.raises(ValueError, match="tsv-m"):
        core_space(_experts(n=2), inner="mean")
