"""One expert trained by two processes (torchrun, gloo, CPU): the controllers agree on every rank."""

from __future__ import annotations

import string
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from curation.domains import load_embedded
from training.config import TrainConfig
from training.launch import launch_command, train_on_processes


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from training.models import build_char_tokenizer

    path = tmp_path_factory.mktemp("tiny-qwen2")
    tokenizer = build_char_tokenizer([string.printable])
    config = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=len(tokenizer), max_position_embeddings=256,
                         pad_token_id=0, eos_token_id=1, bos_token_id=1, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = 1, 0
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_the_launch_command_is_accelerate_on_gpus_and_torchrun_on_cpu(tmp_path):
    gpu = launch_command(4, tmp_path, cuda=True)
    assert gpu[1:6] == ["-m", "accelerate.commands.launch", "--num_processes", "4", "--multi_gpu"]
    zero = launch_command(8, tmp_path, "zero2.yaml", cuda=True)
    assert zero[5:7] == ["--config_file", "zero2.yaml"]
    cpu = launch_command(2, tmp_path, cuda=False)
    assert cpu[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    assert cpu[-3:] == ["-m", "training.launch", str(tmp_path)]


@pytest.mark.slow
def test_two_processes_see_the_same_entropy_and_coefficient_at_every_step(tiny_model_dir, tmp_path):
    train, _ = load_embedded(["gcd"], train_per_domain=16, test_per_domain=1)
    train = [replace(p, metadata={**p.metadata, "verifier": "marker"}) for p in train]
    config = TrainConfig(
        steps=4, prompts_per_step=2, num_generations=4, max_new_tokens=8, lr=5e-4, seed=0,
        lora={"r": 4, "alpha": 8}, processes=2,
        entropy={"mode": "adaptive", "target": 5.0, "coef": 0.0, "delta": 0.01, "c_max": 0.5},
    )
    result = train_on_processes(tiny_model_dir, train, config, tmp_path / "out", "gcd")
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").exists()
    ranks = [pd.read_parquet(tmp_path / "out" / "ranks" / f"rank{r}.parquet") for r in (0, 1)]
    wide = [r.pivot_table(index="step", columns="metric", values="value") for r in ranks]
    assert list(wide[0].index) == list(wide[1].index) == [1, 2, 3, 4]
    for metric in ("entropy", "entropy_coef", "par_lambda", "reward"):
        assert wide[0][metric].tolist() == pytest.approx(wide[1][metric].tolist(), abs=1e-9), metric
    assert wide[0]["entropy_coef"].iloc[-1] > 0  # the controller acted (entropy below its target of 5 nats)
    assert sorted(result.steps.step.unique()) == [1, 2, 3, 4]


def test_a_failed_launch_names_its_log_file_and_quotes_its_end(tmp_path, monkeypatch):
    import sys

    from polymath.errors import TrainingError
    from training import launch
    from training.config import TrainConfig

    script = "import sys\nfor i in range(100): print('rank output line', i)\nsys.exit(3)"
    monkeypatch.setattr(launch, "launch_command", lambda *a, **k: [sys.executable, "-c", script])
    with pytest.raises(TrainingError, match=r"(?s)exit 3.*ranks\.log.*rank output line 99") as failure:
        launch.train_on_processes(tmp_path / "model", [], TrainConfig(processes=2), tmp_path / "out", "toy")
    assert "rank output line 59" not in str(failure.value)  # the end, not all of it
    assert (tmp_path / "out" / launch.LOG_FILE).read_text().count("rank output line") == 100
