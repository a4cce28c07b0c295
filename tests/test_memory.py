"""The training memory estimate: a model's shape from its config.json, and the warning of `polymath status`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.config import load_config
from polymath.errors import ModelError
from training.memory import GIB, Shape, estimate

QWEN25_15B = {"vocab_size": 151936, "hidden_size": 1536, "num_hidden_layers": 28, "intermediate_size": 8960,
              "num_attention_heads": 12, "num_key_value_heads": 2, "tie_word_embeddings": True}


@pytest.fixture
def model_folder(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(QWEN25_15B))
    return tmp_path


def test_the_shape_counts_the_published_parameters(model_folder):
    assert Shape.from_folder(model_folder).params == pytest.approx(1.54e9, rel=0.01)  # Qwen2.5-1.5B: 1.54B
    with pytest.raises(ModelError, match="config.json"):
        Shape.from_folder(model_folder / "missing")


def test_checkpointing_and_smaller_micro_batches_bring_a_long_run_onto_the_card(model_folder):
    shape, train = Shape.from_folder(model_folder), load_config("gpu-math", None).train
    ok = estimate(shape, train, 2, 80 * GIB, vllm=True)
    assert ok.checkpointing and ok.fits()
    assert ok.activations_other > 10 * ok.activations  # what checkpointing saves at 3k tokens
    big = estimate(shape, train.model_copy(update={"micro_batch_size": 16, "gradient_checkpointing": False}), 2,
                   80 * GIB, vllm=True)
    assert not big.fits() and big.activations == pytest.approx(4 * ok.activations_other)
    assert "WILL NOT FIT" in big.lines()[-1] and "gradient_checkpointing" in big.lines()[-1]
    lora_only = ok.optimizer
    full_ft = train.model_copy(update={"lora": train.lora.model_copy(update={"full_finetune": True})})
    full = estimate(shape, full_ft, 2, 80 * GIB, vllm=False)
    assert full.optimizer == 16 * shape.params > 20 * lora_only and full.vllm == 0


def test_status_prints_the_estimate_for_a_gpu_profile_and_nothing_for_the_demo(model_folder, tmp_path, monkeypatch):
    from flows.cli import app

    monkeypatch.setenv("POLYMATH_HOME", str(tmp_path / "ws"))
    runner = CliRunner()
    gpu = runner.invoke(app, ["status", "--config", "gpu-math", "--set", f"model.path={model_folder}",
                              "--set", "train.micro_batch_size=16", "--set", "train.gradient_checkpointing=false",
                              "--gpu-gib", "80"])
    assert "training memory per GPU" in gpu.output and "WILL NOT FIT" in gpu.output, gpu.output
    demo = runner.invoke(app, ["status"])
    assert demo.exit_code == 0 and "training memory" not in demo.output
