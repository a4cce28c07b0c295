"""TrainConfig validation and its translation to TRL's GRPOConfig."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from polymath.errors import ConfigError
from training.config import DEFAULT_TARGET_MODULES, TrainConfig, parse_train_config
from training.expert import grpo_config


def test_defaults_follow_the_papers():
    cfg = TrainConfig()
    assert (cfg.eps_low, cfg.eps_high) == (0.2, 0.28)
    assert cfg.beta == 0.0 and cfg.num_iterations == 1 and not cfg.use_vllm
    assert cfg.lora.target_modules == list(DEFAULT_TARGET_MODULES)
    assert cfg.entropy.mode == "none" and cfg.par.lambda0 == 1.0 and cfg.token_filter == "all"


def test_unknown_keys_and_bad_values_are_rejected():
    with pytest.raises(ValidationError):
        TrainConfig(stepz=3)
    with pytest.raises(ValidationError):
        TrainConfig(entropy={"mode": "adaptive", "c_min": 0.1, "c_max": 0.01})
    with pytest.raises(ValidationError):
        TrainConfig(prompts_per_step=3, num_generations=4, micro_batch_size=5)
    with pytest.raises(ValidationError):
        TrainConfig(par={"lambda0": 1.5})


def test_parse_train_config_names_the_field():
    with pytest.raises(ConfigError, match=r"train\.entropy\.mode"):
        parse_train_config({"entropy": {"mode": "adaptiv"}})
    with pytest.raises(ConfigError, match=r"train\.micro_batch_size"):
        parse_train_config({"micro_batch_size": 0})
    assert parse_train_config({"steps": 3}).steps == 3


def test_grpo_config_translation(tmp_path):
    cfg = TrainConfig(
        steps=7, prompts_per_step=3, num_generations=4, micro_batch_size=6, eps_low=0.1, eps_high=0.3,
        num_iterations=2, beta=0.02, temperature=0.7, max_new_tokens=12, save_steps=0,
    )
    args = grpo_config(cfg, tmp_path)
    assert args.max_steps == 14  # 7 rollout batches, each used for mu = 2 passes
    assert args.per_device_train_batch_size == 6 and args.gradient_accumulation_steps == 2
    assert args.generation_batch_size == 12 and args.num_generations == 4
    assert (args.epsilon, args.epsilon_high, args.loss_type) == (0.1, 0.3, "dapo")
    assert (args.num_iterations, args.beta, args.temperature, args.max_completion_length) == (2, 0.02, 0.7, 12)
    assert args.logging_steps == 1 and args.save_strategy == "no" and not args.gradient_checkpointing
    assert grpo_config(TrainConfig(save_steps=5), tmp_path).save_strategy == "steps"


def test_updates_per_batch_split_one_rollout_batch_into_optimizer_steps(tmp_path):
    cfg = TrainConfig(steps=5, prompts_per_step=4, num_generations=4, updates_per_batch=4)
    args = grpo_config(cfg, tmp_path)
    assert args.max_steps == 20 and args.per_device_train_batch_size == 4 and args.gradient_accumulation_steps == 1
    assert args.steps_per_generation == 4 and args.generation_batch_size == 16  # the same rollout batch as N = 1
    with pytest.raises(ValidationError, match="updates_per_batch .3. must divide"):
        TrainConfig(prompts_per_step=4, num_generations=4, updates_per_batch=3)
    with pytest.raises(ValidationError, match="one optimizer step"):
        TrainConfig(prompts_per_step=4, num_generations=4, updates_per_batch=2, micro_batch_size=16)
