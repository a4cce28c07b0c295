"""Adapter folders: reading, validation errors, writing, peft round trip."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from safetensors.torch import load_file, save_file

from merging.adapters import atomic_folder, read_adapter, validate_experts, write_adapter
from merging.lowrank import LoraFactors
from polymath.errors import MergeError

TARGETS = ("q_proj", "k_proj", "down_proj")


def build_base(path: Path, seed: int = 0, hidden: int = 32) -> Path:
    """A tiny Qwen2 causal LM saved as an HF folder."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
    )
    Qwen2ForCausalLM(config).save_pretrained(path)
    return path


def build_expert(
    base: Path,
    out: Path,
    *,
    seed: int,
    r: int = 4,
    alpha: float = 8,
    targets=TARGETS,
    dtype: torch.dtype = torch.float32,
    **lora_kwargs,
) -> Path:
    """A peft LoRA adapter on ``base`` with random (non-zero) A and B, saved by save_pretrained."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), task_type="CAUSAL_LM", **lora_kwargs)
    peft_model = get_peft_model(model, config)
    g = torch.Generator().manual_seed(seed)
    for name, param in peft_model.named_parameters():
        if "lora_" in name:
            param.data = (torch.randn(param.shape, generator=g) * 0.2).to(dtype)
    peft_model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return build_base(tmp_path_factory.mktemp("base") / "tiny-qwen2")


@pytest.fixture(scope="module")
def pair(base, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("experts")
    return [build_expert(base, root / f"e{i}", seed=i) for i in range(2)]


def test_read_adapter(pair, base):
    expert = read_adapter(pair[0])
    assert expert.base_model == str(base)
    assert len(expert.modules) == 2 * len(TARGETS)
    module = "base_model.model.model.layers.0.self_attn.k_proj"
    factors = expert.modules[module]
    assert factors.a.shape == (4, 32) and factors.b.shape == (16, 4)
    assert factors.scaling == 8 / 4
    raw = load_file(str(pair[0] / "adapter_model.safetensors"))
    assert torch.equal(factors.a, raw[module + ".lora_A.weight"])


def test_scaling_follows_rslora_and_patterns(base, tmp_path):
    rs = read_adapter(build_expert(base, tmp_path / "rs", seed=3, r=4, alpha=8, use_rslora=True))
    assert next(iter(rs.modules.values())).scaling == pytest.approx(8 / 2)
    patterned = read_adapter(
        build_expert(
            base, tmp_path / "pat", seed=4, r=4, alpha=8, alpha_pattern={"down_proj": 2}, rank_pattern={"q_proj": 2}
        )
    )
    assert patterned.modules["base_model.model.model.layers.1.mlp.down_proj"].scaling == pytest.approx(2 / 4)
    q = patterned.modules["base_model.model.model.layers.1.self_attn.q_proj"]
    assert q.rank == 2 and q.scaling == pytest.approx(8 / 2)


def test_peft_round_trip_gives_expected_delta(pair, base, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    experts = [read_adapter(p) for p in pair]
    # Rank 5 and 3 modules with non-trivial scalings: written padded to r = 5, scaling 1.
    g = torch.Generator().manual_seed(9)
    modules = {}
    for i, (module, f) in enumerate(experts[0].modules.items()):
        r = 5 if i % 2 else 3
        modules[module] = LoraFactors(
            torch.randn(r, f.shape[1], generator=g), torch.randn(f.shape[0], r, generator=g), 0.3
        )
    written = write_adapter(tmp_path / "out", modules, experts[0].config, torch.float32)
    assert written.r == 5 and written.lora_alpha == 5 and not written.use_rslora

    saved = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert saved["r"] == 5 and saved["lora_alpha"] == 5 and saved["base_model_name_or_path"] == str(base)
    assert set(load_file(str(tmp_path / "out" / "adapter_model.safetensors"))) == {
        m + s for m in modules for s in (".lora_A.weight", ".lora_B.weight")
    }

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(tmp_path / "out"))
    layers = dict(model.named_modules())
    for module, factors in modules.items():
        delta = layers[module].get_delta_weight("default")
        assert torch.allclose(delta, factors.dense(), rtol=1e-5, atol=1e-6), module

    reread = read_adapter(tmp_path / "out")
    for module, factors in modules.items():
        assert torch.allclose(reread.modules[module].dense(), factors.dense(), rtol=1e-5, atol=1e-6)


def test_bfloat16_experts_keep_their_dtype(base, tmp_path):
    expert = read_adapter(build_expert(base, tmp_path / "bf", seed=5, dtype=torch.bfloat16))
    assert expert.dtype == torch.bfloat16
    assert next(iter(expert.modules.values())).a.dtype == torch.float32


# --- validation errors name the folder and the module ---


def test_mismatched_module(base, pair, tmp_path):
    other = build_expert(base, tmp_path / "fewer", seed=6, targets=("q_proj", "k_proj"))
    with pytest.raises(MergeError, match=r"fewer: lacks module base_model\.model\.model\.layers\.0\.mlp\.down_proj"):
        validate_experts([read_adapter(pair[0]), read_adapter(other)], equal_ranks=True)


def test_mismatched_shape(pair, tmp_path):
    bad = tmp_path / "wide"
    bad.mkdir()
    (bad / "adapter_config.json").write_text((pair[1] / "adapter_config.json").read_text())
    tensors = load_file(str(pair[1] / "adapter_model.safetensors"))
    key = "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"
    tensors[key] = torch.randn(4, 48)
    save_file(tensors, str(bad / "adapter_model.safetensors"))
    with pytest.raises(
        MergeError, match=r"wide: module base_model\.model\.model\.layers\.1\.self_attn\.q_proj updates a 32x48"
    ):
        validate_experts([read_adapter(pair[0]), read_adapter(bad)], equal_ranks=False)


def test_mismatched_base_model(pair, tmp_path):
    other_base = build_base(tmp_path / "other-base", seed=1)
    other = build_expert(other_base, tmp_path / "foreign", seed=7)
    with pytest.raises(MergeError, match=r"foreign: base_model_name_or_path is '.*other-base'"):
        validate_experts([read_adapter(pair[0]), read_adapter(other)], equal_ranks=False)


def test_rank_mismatch_only_for_equal_rank_methods(base, pair, tmp_path):
    wide = read_adapter(build_expert(base, tmp_path / "r8", seed=8, r=8, alpha=16))
    experts = [read_adapter(pair[0]), wide]
    validate_experts(experts, equal_ranks=False)
    with pytest.raises(MergeError, match=r"r8: module base_model\.model\.model\.layers\.0\.mlp\.down_proj has rank 8"):
        validate_experts(experts, equal_ranks=True)


def test_needs_two_adapters(pair):
    with pytest.raises(MergeError, match="at least two"):
        validate_experts([read_adapter(pair[0])], equal_ranks=False)


def test_unreadable_folders(pair, tmp_path):
    with pytest.raises(MergeError, match="not a folder"):
        read_adapter(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MergeError, match=r"no adapter_config\.json"):
        read_adapter(empty)
    (empty / "adapter_config.json").write_text((pair[0] / "adapter_config.json").read_text())
    torch.save({}, empty / "adapter_model.bin")
    with pytest.raises(MergeError, match=r"safetensors only.*adapter_model\.bin"):
        read_adapter(empty)


def _edited_copy(adapter: Path, out: Path, edit) -> Path:
    """A copy of ``adapter`` whose tensors ``edit`` changed in place."""
    out.mkdir()
    (out / "adapter_config.json").write_text((adapter / "adapter_config.json").read_text())
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    edit(tensors)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    return out


def test_rejects_non_lora_tensors_and_dora(pair, tmp_path):
    magnitude = "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"
    odd = _edited_copy(pair[0], tmp_path / "odd", lambda t: t.update({magnitude: torch.ones(32)}))
    with pytest.raises(MergeError, match=r"odd/adapter_model.safetensors: tensor .*q_proj\.lora_magnitude_vector"):
        read_adapter(odd)
    config = json.loads((pair[0] / "adapter_config.json").read_text())
    config["use_dora"] = True
    (odd / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(MergeError, match="use_dora is set"):
        read_adapter(odd)


def test_missing_factor_and_rank_inconsistency(pair, tmp_path):
    k_proj_b = "base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"
    half = _edited_copy(pair[0], tmp_path / "half", lambda t: t.pop(k_proj_b))
    with pytest.raises(MergeError, match=r"half: module .*layers\.0\.self_attn\.k_proj has no lora_B"):
        read_adapter(half)
    config = json.loads((pair[0] / "adapter_config.json").read_text())
    config["r"] = 6
    (half / "adapter_config.json").write_text(json.dumps(config))
    save_file(load_file(str(pair[0] / "adapter_model.safetensors")), str(half / "adapter_model.safetensors"))
    with pytest.raises(MergeError, match="rank 4 but the config says r=6"):
        read_adapter(half)


# --- atomic output ---


def test_atomic_folder_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "merged"
    with pytest.raises(RuntimeError), atomic_folder(out) as tmp:
        (tmp / "partial").write_text("x")
        raise RuntimeError("crash mid-write")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_folder_refuses_then_overwrites(tmp_path):
    out = tmp_path / "merged"
    with atomic_folder(out) as tmp:
        (tmp / "a").write_text("1")
    assert (out / "a").read_text() == "1"
    with pytest.raises(MergeError, match="already exists"), atomic_folder(out):
        pass
    with atomic_folder(out, overwrite=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]
