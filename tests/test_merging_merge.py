"""merge_adapters end to end: every registered method, outputs loaded back through peft."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from merging import MergeConfig, get_method, merge_adapters, method_names, read_adapter
from merging.lowrank import LoraFactors, truncate
from merging.robustmerge import robustmerge, robustmerge_reference
from polymath.errors import ConfigError, MergeError, ModelError
from tests.test_merging_adapters import base, build_base, build_expert  # noqa: F401 (base: a fixture)

N_EXPERTS = 3


@pytest.fixture(scope="module")
def experts(base, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("experts")
    return [build_expert(base, root / f"domain{i}", seed=10 + i, alpha=4 * (i + 1)) for i in range(N_EXPERTS)]


def merged_deltas(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    """Per-module dense update of an adapter as peft applies it."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(adapter))
    return {
        name: layer.get_delta_weight("default").detach()
        for name, layer in model.named_modules()
        if isinstance(layer, LoraLayer)
    }


def close(x: torch.Tensor, y: torch.Tensor, tol: float = 1e-5) -> bool:
    return (torch.linalg.norm(x - y) / torch.linalg.norm(y)).item() <= tol


def test_registry_names():
    assert method_names() == ["robustmerge", "robustmerge-reference", "task-arithmetic", "ties", "dare", "knots", "core-space",
                              "core-space-iso-cts"]
    assert get_method("ties").name == "ties"
    with pytest.raises(ConfigError, match=r"merge.method: unknown 'copa'; did you mean 'core-space'\? \(choose from: robustmerge, robustmerge-reference, task-arithmetic"):
        get_method("copa")


def test_robustmerge_end_to_end(base, experts, tmp_path):
    out = tmp_path / "merged"
    report = merge_adapters(experts, out, MergeConfig())
    loaded = [read_adapter(p) for p in experts]
    deltas = merged_deltas(base, out)
    assert report.rank == 4 * N_EXPERTS
    assert set(deltas) == set(loaded[0].modules)
    for module, delta in deltas.items():
        expected = robustmerge([e.modules[module] for e in loaded], keep=0.2, lam=2.0).dense()
        assert close(delta, expected), module

    assert report.method == "robustmerge"
    assert report.parameters == {"keep": 0.2, "lam": 2.0, "normalize": True, "rank": None}
    assert len(report.modules) == len(deltas) and report.seconds > 0
    stats = {m.module: m for m in report.modules}
    for module, delta in deltas.items():
        dense_experts = [e.modules[module].dense() for e in loaded]
        assert stats[module].delta_norm == pytest.approx(torch.linalg.norm(delta).item(), rel=1e-4)
        for cos, d in zip(stats[module].cosines, dense_experts, strict=True):
            assert cos == pytest.approx(((delta * d).sum() / (delta.norm() * d.norm())).item(), rel=1e-4, abs=1e-6)

    row = report.to_row()
    assert row["method"] == "robustmerge" and row["n_experts"] == N_EXPERTS and row["rank"] == 12
    assert all(isinstance(v, (int, float, str, type(None))) for v in row.values())
    assert json.loads(row["parameters_json"])["keep"] == 0.2
    assert set(json.loads(row["expert_cosines_json"])) == {str(p) for p in experts}
    assert json.loads((out / "merge_report.json").read_text())["method"] == "robustmerge"


def test_robustmerge_compressed(base, experts, tmp_path):
    report = merge_adapters(experts, tmp_path / "r4", MergeConfig(rank=4, lam=1.5, keep=0.3))
    loaded = [read_adapter(p) for p in experts]
    deltas = merged_deltas(base, tmp_path / "r4")
    assert report.rank == 4
    for module, delta in deltas.items():
        exact = robustmerge([e.modules[module] for e in loaded], keep=0.3, lam=1.5).dense()
        u, s, vh = torch.linalg.svd(exact, full_matrices=False)
        assert close(delta, (u[:, :4] * s[:4]) @ vh[:4]), module
    assert all(m.truncation_error is not None and 0 < m.truncation_error < 1 for m in report.modules)
    assert report.to_row()["truncation_error_mean"] > 0


def test_reference_end_to_end(base, experts, tmp_path):
    report = merge_adapters(experts, tmp_path / "ref", MergeConfig(method="robustmerge-reference"))
    loaded = [read_adapter(p) for p in experts]
    assert report.rank == 4
    assert report.parameters["clamp_ratio"] == 0.2
    for module, delta in merged_deltas(base, tmp_path / "ref").items():
        expected = robustmerge_reference([e.modules[module] for e in loaded]).dense()
        assert close(delta, expected), module


def test_task_arithmetic_is_the_exact_weighted_sum(base, experts, tmp_path):
    weights = [1.0, -0.5, 2.0]
    report = merge_adapters(experts, tmp_path / "ta", MergeConfig(method="task-arithmetic", weights=weights))
    loaded = [read_adapter(p) for p in experts]
    assert report.rank == 4 * N_EXPERTS
    assert report.parameters["combination_type"] == "cat"
    for module, delta in merged_deltas(base, tmp_path / "ta").items():
        expected = sum(w * e.modules[module].dense() for w, e in zip(weights, loaded, strict=True))
        assert close(delta, expected), module


def test_task_arithmetic_compressed_and_mixed_ranks(base, experts, tmp_path):
    wide = build_expert(base, tmp_path / "wide", seed=30, r=8, alpha=8)
    paths = [experts[0], wide]
    merge_adapters(paths, tmp_path / "ta5", MergeConfig(method="task-arithmetic", rank=5))
    loaded = [read_adapter(p) for p in paths]
    for module, delta in merged_deltas(base, tmp_path / "ta5").items():
        exact = LoraFactors(
            torch.cat([e.modules[module].a for e in loaded]),
            torch.cat([e.modules[module].b * e.modules[module].scaling for e in loaded], dim=1),
        )
        assert close(delta, truncate(exact, 5)[0].dense()), module
    with pytest.raises(MergeError, match="RobustMerge needs equal ranks"):
        merge_adapters(paths, tmp_path / "rm", MergeConfig())


def dense_ties(deltas: list[torch.Tensor], weights: list[float], density: float) -> torch.Tensor:
    trimmed = []
    for d in deltas:
        k = int(density * d.numel())
        threshold = torch.sort(d.abs().flatten(), descending=True).values[k - 1]
        trimmed.append(d * (d.abs() >= threshold))
    stacked = torch.stack(trimmed)
    elected = torch.where(stacked.sum(dim=0) >= 0, 1.0, -1.0)
    agree = stacked.sign() == elected
    weighted = stacked * torch.tensor(weights)[:, None, None]
    return (weighted * agree).sum(dim=0) / agree.sum(dim=0).clamp(min=1)


def test_ties_is_ties_of_the_dense_updates(base, experts, tmp_path):
    # rank 64 >= min(d, k) of every module: the SVD truncation is lossless.
    weights = [1.0, 0.5, 2.0]
    config = MergeConfig(method="ties", rank=64, density=0.3, weights=weights)
    report = merge_adapters(experts, tmp_path / "ties", config)
    assert report.parameters["density"] == 0.3 and report.parameters["combination_type"] == "ties_svd"
    loaded = [read_adapter(p) for p in experts]
    for module, delta in merged_deltas(base, tmp_path / "ties").items():
        expected = dense_ties([e.modules[module].dense() for e in loaded], weights, 0.3)
        assert close(delta, expected, tol=1e-4), module


def test_ties_default_rank_is_summed_rank(base, experts, tmp_path):
    report = merge_adapters(experts, tmp_path / "ties12", MergeConfig(method="ties"))
    assert report.rank == 4 * N_EXPERTS
    assert report.parameters["density"] == 0.2


def test_dare_keeps_rescaled_subsets(base, experts, tmp_path):
    paths = experts[:2]
    config = MergeConfig(method="dare", rank=64, density=0.5, seed=3)
    merge_adapters(paths, tmp_path / "dare", config)
    loaded = [read_adapter(p) for p in paths]
    deltas = merged_deltas(base, tmp_path / "dare")
    for module, delta in deltas.items():
        d0, d1 = (e.modules[module].dense() / 0.5 for e in loaded)
        # Each entry is the rescaled sum of the experts whose entry survived the drop.
        candidates = torch.stack([s0 * d0 + s1 * d1 for s0, s1 in itertools.product((0, 1), repeat=2)])
        nearest = (candidates - delta).abs().min(dim=0).values
        assert nearest.max() <= 1e-4 * delta.abs().max(), module
        dropped = (candidates[0] - delta).abs() <= 1e-6
        assert 0.1 < dropped.float().mean() < 0.45, module  # about a quarter lose both entries

    merge_adapters(paths, tmp_path / "dare-same", config)
    merge_adapters(paths, tmp_path / "dare-other", config.model_copy(update={"seed": 4}))
    same, other = merged_deltas(base, tmp_path / "dare-same"), merged_deltas(base, tmp_path / "dare-other")
    module = next(iter(deltas))
    assert torch.allclose(same[module], deltas[module], atol=1e-6)
    assert not torch.allclose(other[module], deltas[module], atol=1e-3)


def test_baselines_need_a_local_base_model(experts, base, tmp_path):
    with pytest.raises(ModelError, match=r"base_model .*missing is not a folder"):
        merge_adapters(experts, tmp_path / "x", MergeConfig(method="ties", base_model=tmp_path / "missing"))
    # An explicit base_model overrides base_model_name_or_path.
    report = merge_adapters(experts, tmp_path / "y", MergeConfig(method="task-arithmetic", base_model=base))
    assert report.rank == 12


def test_weights_must_match_adapters(experts, tmp_path):
    with pytest.raises(ConfigError, match="2 values for 3 adapters"):
        merge_adapters(experts, tmp_path / "w", MergeConfig(method="task-arithmetic", weights=[1.0, 2.0]))
    assert not (tmp_path / "w").exists()


def test_failed_merge_writes_nothing(experts, base, tmp_path):
    other = build_expert(base, tmp_path / "narrow", seed=40, targets=("q_proj",))
    with pytest.raises(MergeError):
        merge_adapters([*experts, other], tmp_path / "out", MergeConfig())
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite(experts, tmp_path):
    merge_adapters(experts, tmp_path / "m", MergeConfig())
    with pytest.raises(MergeError, match="already exists"):
        merge_adapters(experts, tmp_path / "m", MergeConfig())
    report = merge_adapters(experts, tmp_path / "m", MergeConfig(rank=2), overwrite=True)
    assert report.rank == 2 and read_adapter(tmp_path / "m").config.r == 2


def test_overwrite_replaces_only_a_merge_output_that_holds_no_input(experts, tmp_path):
    import shutil

    copies = [shutil.copytree(e, tmp_path / "inputs" / f"e{i}") for i, e in enumerate(experts)]
    for out in (copies[0], tmp_path / "inputs"):
        with pytest.raises(MergeError, match="would delete the input adapter"):
            merge_adapters(copies, out, MergeConfig(), overwrite=True)
    stranger = tmp_path / "notes"
    stranger.mkdir()
    (stranger / "keep.txt").write_text("mine")
    with pytest.raises(MergeError, match="replaces only a folder a merge wrote"):
        merge_adapters(copies, stranger, MergeConfig(), overwrite=True)
    assert (stranger / "keep.txt").read_text() == "mine"
    assert all((c / "adapter_model.safetensors").exists() for c in copies)


def test_bfloat16_output_and_forward_pass(base, experts, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merge_adapters(experts, tmp_path / "bf", MergeConfig(save_dtype="bfloat16", rank=6))
    merged = read_adapter(tmp_path / "bf")
    assert merged.dtype == torch.bfloat16
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(tmp_path / "bf"))
    ids = torch.arange(10)[None, :]
    with torch.no_grad():
        adapted = model(ids).logits
        with model.disable_adapter():
            plain = model(ids).logits
    assert torch.isfinite(adapted).all() and not torch.allclose(adapted, plain)


def test_config_rejects_unknown_and_invalid_fields():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        MergeConfig(method="robustmerge", keeep=0.3)
    with pytest.raises(ValidationError):
        MergeConfig(keep=0.0)
    with pytest.raises(ValidationError):
        MergeConfig(method="pcb")
    assert MergeConfig.model_fields["keep"].description.startswith("RobustMerge")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("method", "rank"), [("robustmerge", 6), ("robustmerge-reference", None), ("ties", 64)])
def test_cuda_merge_matches_cpu(experts, tmp_path, method, rank):
    merge_adapters(experts, tmp_path / "cpu", MergeConfig(method=method, rank=rank))
    merge_adapters(experts, tmp_path / "gpu", MergeConfig(method=method, rank=rank, device="cuda"))
    cpu, gpu = read_adapter(tmp_path / "cpu"), read_adapter(tmp_path / "gpu")
    for module, factors in cpu.modules.items():
        assert close(gpu.modules[module].dense(), factors.dense(), tol=1e-4), module


@pytest.mark.parametrize("method", ["task-arithmetic", "ties", "dare", "robustmerge"])
def test_rslora_experts_merge_to_their_dense_deltas(base, tmp_path, method):
    """peft copies use_rslora onto the merged adapter; the merge must still give the experts' own scale."""
    experts = [build_expert(base, tmp_path / f"rs{i}", seed=20 + i, r=4, alpha=8, use_rslora=True) for i in range(2)]
    loaded = [read_adapter(p) for p in experts]
    out = tmp_path / "merged"
    merge_adapters(experts, out, MergeConfig(method=method, density=1.0, lam=1.0, keep=1.0, normalize=False))
    deltas = merged_deltas(base, out)
    for module, delta in deltas.items():
        # with nothing trimmed or dropped, every method is the plain sum of s_n B_n A_n, s_n = alpha / sqrt(r)
        parts = [e.modules[module] for e in loaded]
        assert parts[0].scaling == pytest.approx(8 / 2)
        expected = sum(p.dense() for p in parts)
        if method == "ties":  # TIES averages agreeing entries: with 2 experts, sign disagreements keep one
            assert torch.linalg.norm(delta) < 1.5 * torch.linalg.norm(expected)
        else:
            assert close(delta, expected, 1e-4), (method, module)


def test_every_method_owns_a_model_of_the_config_fields_it_reads():
    from merging.methods import SHARED_OPTIONS

    config_fields = set(MergeConfig.model_fields)
    for name in method_names():
        method = get_method(name)
        owned = set(method.Params.model_fields)
        assert owned <= config_fields and not owned & set(SHARED_OPTIONS), name
        assert method.scale_parameter in owned, name  # the scale sweep multiplies a parameter it reads
        recorded = method.parameters(MergeConfig(method=name), 2)
        assert owned <= set(recorded), name
    assert get_method("ties").parameters(MergeConfig(method="ties"), 2)["density"] == 0.2  # its default, resolved
    assert get_method("dare").params(MergeConfig(method="dare", density=0.3), 2).density == 0.3
    assert "keep" not in get_method("ties").Params.model_fields and "seed" in get_method("dare").Params.model_fields


def test_every_method_declares_the_field_its_scale_sweep_multiplies():
    config = MergeConfig(lam=3.0, scale=0.8, weights=[1.0, 2.0, 0.5])
    for name in method_names():
        method = get_method(name)
        scaled = method.scaled(config, 0.5, 3)
        before, after = getattr(config, method.scale_parameter), getattr(scaled, method.scale_parameter)
        assert after == ([0.5 * w for w in before] if method.scale_parameter == "weights" else 0.5 * before)
    assert get_method("ties").scaled(MergeConfig(), 2.0, 2).weights == [2.0, 2.0]
    assert get_method("robustmerge").scale_parameter == "lam" and get_method("knots").scale_parameter == "scale"


def test_knots_end_to_end_through_peft(base, experts, tmp_path):
    from merging.knots import knots_merge

    out = tmp_path / "knots"
    report = merge_adapters(experts, out, MergeConfig(method="knots", scale=0.7, density=0.3))
    loaded = [read_adapter(p) for p in experts]
    assert report.rank == 4 * N_EXPERTS and report.parameters["knots_trim"] == "task"
    assert MergeConfig(method="knots").resolved_density() == 1.0  # the official LLM configuration: no trim
    # the trim ranks each expert's entries over every module at once
    expected = knots_merge({m: [e.modules[m] for e in loaded] for m in loaded[0].modules}, density=0.3, scale=0.7)
    for module, delta in merged_deltas(base, out).items():
        assert close(delta, expected[module].dense(), 1e-4), module


@pytest.mark.parametrize("inner", ["tsv-m", "iso-cts"])
def test_core_space_end_to_end_through_peft(base, experts, tmp_path, inner):
    from merging.core_space import core_space

    method = "core-space" if inner == "tsv-m" else "core-space-iso-cts"
    out = tmp_path / method
    report = merge_adapters(experts, out, MergeConfig(method=method, scale=0.8))
    loaded = [read_adapter(p) for p in experts]
    assert report.rank <= 4 * N_EXPERTS
    for module, delta in merged_deltas(base, out).items():
        expected = core_space([e.modules[module] for e in loaded], inner=inner, scale=0.8).dense()
        assert close(delta, expected, 1e-4), module


def test_every_methods_scale_moves_its_update_linearly(experts, tmp_path):
    """A scale grid means the same for every method: doubling the scale doubles the merged update (the
    reference form's lam enters both factors, so its sweep scales B alone)."""
    for name in method_names():
        method = get_method(name)
        config = MergeConfig(method=name)
        merge_adapters(experts, tmp_path / name / "1", config)
        merge_adapters(experts, tmp_path / name / "2", method.scaled(config, 2.0, N_EXPERTS))
        one, two = read_adapter(tmp_path / name / "1"), read_adapter(tmp_path / name / "2")
        for module, factors in one.modules.items():
            assert close(two.modules[module].dense(), 2 * factors.dense(), 1e-4), (name, module)


def test_robustmerge_keeping_everything_is_task_arithmetic(base, experts, tmp_path):
    """keep = 1 prunes nothing and every row scale is 1: the normalized paper form is task arithmetic / N,
    so lam = N gives task arithmetic exactly (and lam = 1 without the normalization)."""
    merge_adapters(experts, tmp_path / "ta", MergeConfig(method="task-arithmetic"))
    ta = merged_deltas(base, tmp_path / "ta")
    for name, config in {"normalized": MergeConfig(keep=1.0, lam=float(N_EXPERTS)),
                         "plain": MergeConfig(keep=1.0, lam=1.0, normalize=False)}.items():
        merge_adapters(experts, tmp_path / name, config)
        for module, delta in merged_deltas(base, tmp_path / name).items():
            assert close(delta, ta[module], 1e-4), (name, module)
