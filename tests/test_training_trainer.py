"""The GRPO trainer subclass and train_expert on a tiny random Qwen2 with a character tokenizer."""

from __future__ import annotations

import os
import shutil
import string
from pathlib import Path

import pandas as pd
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from safetensors.torch import load_file  # noqa: E402
from pydantic import ValidationError  # noqa: E402
from trl import GRPOTrainer  # noqa: E402

from polymath.records import Problem  # noqa: E402
from polymath.errors import ConfigError, DataError, ModelError, TrainingError  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.controllers import STATE_FILE, Controllers  # noqa: E402
from training.expert import build_dataset, grpo_config, make_reward_func, train_expert  # noqa: E402
from training.grpo import PolymathGRPOTrainer  # noqa: E402
from training.step_record import STEP_METRICS  # noqa: E402
from training.models import TinyModelConfig, build_char_tokenizer, build_tiny_model  # noqa: E402

DIGITS = set("0123456789")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-qwen2")
    tokenizer = build_char_tokenizer([string.printable])
    model = build_tiny_model(TinyModelConfig(hidden_size=32, intermediate_size=64, num_layers=2), len(tokenizer))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def problems() -> list[Problem]:
    return [Problem(id=f"p{i}", domain="toy", prompt=f"Count to {i}: ", answer=str(i)) for i in range(8)]


def digit_reward(problem: Problem, completion: str) -> float:
    """Toy reward: the share of digits in the completion (varies within every group)."""
    return sum(ch in DIGITS for ch in completion) / max(len(completion), 1)


def small_config(**overrides) -> TrainConfig:
    base = dict(
        steps=3, lr=5e-3, prompts_per_step=2, num_generations=4, max_new_tokens=8, max_prompt_length=64,
        cpu_threads=1, lora={"r": 4, "alpha": 8},
    )
    base.update(overrides)
    return TrainConfig(**base)


def test_train_expert_end_to_end(model_dir, problems, tmp_path):
    config = small_config(
        entropy={"mode": "aer", "coef": 0.01, "delta": 0.005, "c_max": 0.1}, par={"schedule": "staged"}
    )
    result = train_expert(model_dir, problems, digit_reward, config, tmp_path, "toy")

    assert result.adapter_dir == tmp_path / "adapter"
    weights = load_file(result.adapter_dir / "adapter_model.safetensors")
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert len(lora_b) == 2 * 7  # 2 layers x q/k/v/o/gate/up/down
    assert all(t.abs().sum() > 0 for t in lora_b)  # B starts at zero: training moved every adapter

    steps = pd.read_parquet(tmp_path / "steps.parquet")
    assert list(steps.columns) == ["expert", "step", "metric", "value"]
    assert set(steps["expert"]) == {"toy"}
    assert sorted(steps["step"].unique()) == [1, 2, 3]
    for _, rows in steps.groupby("step"):
        assert sorted(rows["metric"]) == sorted(STEP_METRICS)
    wide = steps.pivot(index="step", columns="metric", values="value")
    assert wide["par_threshold"].isna().all()  # a staged schedule has no entropy threshold
    assert wide.drop(columns="par_threshold").notna().all().all()
    assert (wide["entropy_p10"] <= wide["entropy"]).all() and (wide["entropy"] <= wide["entropy_p90"]).all()
    assert wide["par_lambda"].tolist() == pytest.approx([0.0, 1 / 3, 1.0])  # staged: 0 until 1.5, then linear
    assert wide["entropy_target"].tolist() == pytest.approx([0.4 * result.initial_entropy] * 3)
    assert result.initial_entropy == pytest.approx(wide.loc[1, "entropy"])
    assert 0 < wide["response_length"].min() and wide["response_length"].max() <= 8
    assert (wide["lr"] == 5e-3).all() and (wide["step_time"] > 0).all() and (wide["grad_norm"] > 0).all()
    pd.testing.assert_frame_equal(result.steps.reset_index(drop=True), steps.astype(result.steps.dtypes))
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "checkpoints").exists()
    assert result.seconds > 0


def test_full_finetune_saves_a_whole_model(model_dir, problems, tmp_path):
    result = train_expert(model_dir, problems, digit_reward, small_config(steps=1, lora={"full_finetune": True}),
                          tmp_path, "toy")
    assert result.adapter_dir == tmp_path / "model" and not (tmp_path / "adapter").exists()
    trained = load_file(result.adapter_dir / "model.safetensors")
    base = load_file(model_dir / "model.safetensors")
    assert trained.keys() == base.keys()
    assert any(not torch.equal(trained[k], base[k]) for k in base)
    assert (result.adapter_dir / "tokenizer.json").exists()


def test_resume_restores_controller_state(model_dir, problems, tmp_path):
    # adaptive with a target far above the entropy: the coefficient grows by delta after every step
    config = small_config(
        steps=4, save_steps=2, entropy={"mode": "adaptive", "coef": 0.0, "target": 50.0, "delta": 0.01, "c_max": 1.0}
    )
    first = train_expert(model_dir, problems, digit_reward, config, tmp_path, "toy")
    coef = first.steps[first.steps.metric == "entropy_coef"].set_index("step")["value"]
    assert coef.tolist() == pytest.approx([0.0, 0.01, 0.02, 0.03])
    saved = (tmp_path / "checkpoints" / "checkpoint-2" / STATE_FILE).read_text()
    assert '"steps_done": 2' in saved

    # Lose the last checkpoint and rerun: training resumes after step 2 with the saved controllers.
    shutil.rmtree(tmp_path / "checkpoints" / "checkpoint-4")
    resumed = train_expert(model_dir, problems, digit_reward, config, tmp_path, "toy")
    coef = resumed.steps[resumed.steps.metric == "entropy_coef"].set_index("step")["value"]
    assert sorted(coef.index) == [1, 2, 3, 4]
    assert coef.tolist() == pytest.approx([0.0, 0.01, 0.02, 0.03])  # fresh controllers would give 0.0 at step 3
    assert resumed.initial_entropy == pytest.approx(first.initial_entropy)


def _trainer_and_inputs(model_dir, problems, tmp_path, **config_overrides):
    config = small_config(**config_overrides)
    from training.expert import _load, _lora_config

    model, tokenizer = _load(model_dir)
    trainer = PolymathGRPOTrainer(
        model=model,
        reward_funcs=[make_reward_func(problems, digit_reward, "toy")],
        args=grpo_config(config, tmp_path),
        train_dataset=build_dataset(problems, tokenizer),
        processing_class=tokenizer,
        peft_config=_lora_config(config),
        controllers=Controllers(config.entropy, config.par, config.steps),
    )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    # Move the adapter off its zero init so the policy differs from the base model.
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                noise = torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name)))
                p.copy_(0.05 * noise)
    g = torch.Generator().manual_seed(1)
    b, prompt_len, completion_len = 8, 6, 5
    completion_mask = torch.ones(b, completion_len, dtype=torch.long)
    completion_mask[::3, 3:] = 0
    prompt_mask = torch.ones(b, prompt_len, dtype=torch.long)
    prompt_mask[1::2, :2] = 0
    inputs = {
        "prompt_ids": torch.randint(3, 90, (b, prompt_len), generator=g),
        "prompt_mask": prompt_mask,
        "completion_ids": torch.randint(3, 90, (b, completion_len), generator=g),
        "completion_mask": completion_mask,
        "advantages": torch.randn(b, generator=g),
        "num_items_in_batch": completion_mask.sum(),
        "entropy_weight": torch.ones(b),
    }
    inputs = {k: v.to(trainer.accelerator.device) for k, v in inputs.items()}
    prompt_mask, completion_mask = inputs["prompt_mask"], inputs["completion_mask"]
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model,
            torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1),
            torch.cat([prompt_mask, completion_mask], 1),
            completion_len,
        )
    # Old log-probs off by up to +-0.4 nats: some ratios fall outside the clip range.
    inputs["old_per_token_logps"] = logps + 0.4 * (2 * torch.rand(logps.shape, generator=g) - 1).to(logps.device)
    return trainer, inputs


def _loss_and_grads(fn, trainer, inputs):
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    loss = fn(trainer.model, inputs)
    return loss.detach(), torch.autograd.grad(loss, params)


def test_loss_matches_trl_dapo_loss_and_its_entropy_bonus(model_dir, problems, tmp_path):
    trainer, inputs = _trainer_and_inputs(model_dir, problems, tmp_path)
    ours, ours_g = _loss_and_grads(trainer._compute_loss, trainer, inputs)
    trl, trl_g = _loss_and_grads(lambda m, x: GRPOTrainer._compute_loss(trainer, m, x), trainer, inputs)
    assert ours.item() == pytest.approx(trl.item(), rel=1e-5, abs=1e-7)
    for a, b in zip(ours_g, trl_g, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert trainer._step_record["clip_frac_low"] + trainer._step_record["clip_frac_high"] > 0

    # PAR lambda = 0.5 equals TRL's loss with the positive advantages halved.
    trainer.controllers.par.value = 0.5
    ours, _ = _loss_and_grads(trainer._compute_loss, trainer, inputs)
    adv = inputs["advantages"]
    halved = dict(inputs, advantages=torch.where(adv > 0, 0.5 * adv, adv))
    trl, _ = _loss_and_grads(lambda m, x: GRPOTrainer._compute_loss(trainer, m, x), trainer, halved)
    assert ours.item() == pytest.approx(trl.item(), rel=1e-5, abs=1e-7)

    # A fixed entropy coefficient equals TRL's own static entropy bonus (loss - c * mean H).
    trainer.controllers.par.value = 1.0
    trainer.controllers.entropy.settings = trainer.controllers.entropy.settings.model_copy(update={"mode": "fixed"})
    trainer.controllers.entropy.coef = 0.05
    ours, ours_g = _loss_and_grads(trainer._compute_loss, trainer, inputs)
    trainer.entropy_coef, trainer._entropy_bonus_enabled = 0.05, True
    trl, trl_g = _loss_and_grads(lambda m, x: GRPOTrainer._compute_loss(trainer, m, x), trainer, inputs)
    assert ours.item() == pytest.approx(trl.item(), rel=1e-5, abs=1e-7)
    for a, b in zip(ours_g, trl_g, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_a_micro_batch_is_cut_to_its_longest_completion_with_the_same_loss_and_step_record(
        model_dir, problems, tmp_path):
    from training.batches import trim_completions

    trainer, inputs = _trainer_and_inputs(model_dir, problems, tmp_path)
    ours, ours_g = _loss_and_grads(trainer._compute_loss, trainer, inputs)
    record = dict(trainer._step_record)
    # Three more columns that no row's loss reads, as a micro-batch of a rollout batch whose longest
    # completion is in another micro-batch.
    g = torch.Generator().manual_seed(3)
    b = inputs["completion_ids"].size(0)
    padded = dict(inputs)
    padded["completion_ids"] = torch.cat([inputs["completion_ids"], torch.randint(3, 90, (b, 3), generator=g)], 1)
    padded["completion_mask"] = torch.cat([inputs["completion_mask"], torch.zeros(b, 3, dtype=torch.long)], 1)
    padded["old_per_token_logps"] = torch.cat([inputs["old_per_token_logps"], torch.randn(b, 3, generator=g)], 1)
    trimmed = trim_completions(padded)
    assert trimmed["completion_ids"].shape == inputs["completion_ids"].shape
    assert trimmed["old_per_token_logps"].shape == inputs["old_per_token_logps"].shape
    assert trimmed["prompt_ids"] is inputs["prompt_ids"] and trimmed["advantages"] is inputs["advantages"]
    assert trim_completions(inputs) is inputs  # a batch that reaches its last column is left alone

    cut, cut_g = _loss_and_grads(trainer._compute_loss, trainer, padded)
    assert cut.item() == pytest.approx(ours.item(), rel=1e-6)
    for a, c in zip(ours_g, cut_g, strict=True):
        torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-8)
    for name in ("entropy", "clip_frac_low", "clip_frac_high", "pos_adv_token_frac", "logp_adv_cov"):
        assert trainer._step_record[name] == pytest.approx(record[name], rel=1e-5)

    # Rows whose loss is dropped (zero-variance groups) leave one column, never an empty forward.
    silent = dict(padded, completion_mask=torch.zeros_like(padded["completion_mask"]))
    assert trim_completions(silent)["completion_ids"].size(1) == 1


def test_dropped_groups_leave_the_logged_entropy_and_lengths_alone(model_dir, problems, tmp_path):
    """Dynamic sampling drops zero-variance groups from the loss only: the step's logged entropy (and its
    quantiles) covers the same tokens whichever groups are dropped, while the loss equals TRL's on the kept rows."""
    trainer, inputs = _trainer_and_inputs(model_dir, problems, tmp_path)
    trainer._rollout_stats = {}
    trainer._compute_loss(trainer.model, inputs)
    whole = dict(trainer._step_record)
    keep = torch.tensor([1, 1, 0, 0, 1, 1, 0, 0], dtype=inputs["completion_mask"].dtype)
    kept_tokens = (inputs["completion_mask"] * keep[:, None]).sum()
    dropped = dict(inputs, group_keep=keep, num_items_in_batch=kept_tokens)
    ours, ours_g = _loss_and_grads(trainer._compute_loss, trainer, dropped)
    record = dict(trainer._step_record)
    for name in ("entropy", "entropy_p10", "entropy_p90"):
        assert record[name] == pytest.approx(whole[name], rel=1e-6), name
    reference = dict(inputs, completion_mask=inputs["completion_mask"] * keep[:, None], num_items_in_batch=kept_tokens)
    trl, trl_g = _loss_and_grads(lambda m, x: GRPOTrainer._compute_loss(trainer, m, x), trainer, reference)
    assert ours.item() == pytest.approx(trl.item(), rel=1e-5, abs=1e-7)
    for a, b in zip(ours_g, trl_g, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    # the covariance of log-prob and advantage splits exactly into its two advantage signs' shares
    assert record["logp_adv_cov_pos"] + record["logp_adv_cov_neg"] == pytest.approx(record["logp_adv_cov"], abs=1e-9)


def test_prompts_keep_their_last_tokens(model_dir, problems, tmp_path):
    trainer, _ = _trainer_and_inputs(model_dir, problems, tmp_path)
    tokenizer = trainer.processing_class
    trainer.max_prompt_length = 5
    ids, _, _ = trainer._tokenize_prompts(["abcdefghij", "abc"])
    assert [tokenizer.decode(x) for x in ids] == ["fghij", "abc"]


def test_trainer_rejects_trl_options_it_replaces(model_dir, problems, tmp_path):
    config = small_config()
    args = grpo_config(config, tmp_path)
    args.loss_type = "grpo"
    from training.expert import _load

    model, tokenizer = _load(model_dir)
    with pytest.raises(TrainingError, match="loss_type"):
        PolymathGRPOTrainer(
            model=model,
            reward_funcs=[make_reward_func(problems, digit_reward, "toy")],
            args=args,
            train_dataset=build_dataset(problems, tokenizer),
            processing_class=tokenizer,
            controllers=Controllers(config.entropy, config.par, config.steps),
        )


def test_user_errors_name_the_fix(model_dir, problems, tmp_path):
    config = small_config(steps=1)
    with pytest.raises(DataError, match="no training problems"):
        train_expert(model_dir, [], digit_reward, config, tmp_path, "toy")
    with pytest.raises(DataError, match="prompts_per_step"):
        train_expert(model_dir, problems[:1], digit_reward, config, tmp_path, "toy")
    with pytest.raises(DataError, match="appears twice"):
        train_expert(model_dir, problems + problems[:1], digit_reward, config, tmp_path, "toy")
    with pytest.raises(ModelError, match="config.json"):
        train_expert(tmp_path / "nowhere", problems, digit_reward, config, tmp_path, "toy")
    with pytest.raises(ConfigError, match="max_new_tokens"):
        train_expert(model_dir, problems, digit_reward, small_config(max_new_tokens=256), tmp_path, "toy")
    threads = torch.get_num_threads()
    with pytest.raises(TrainingError, match=r"\[0, 1\]"):
        bad_config = small_config(steps=1, cpu_threads=threads + 1)
        train_expert(model_dir, problems, lambda p, c: 2.0, bad_config, tmp_path / "bad", "toy")
    assert torch.get_num_threads() == threads  # restored even when training fails


def test_merged_adapter_sampling_matches_unmerged_and_restores_weights(model_dir, problems, tmp_path):
    trainer, inputs = _trainer_and_inputs(model_dir, problems, tmp_path)
    model = trainer.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    prompts = [inputs["prompt_ids"][i].tolist() for i in range(4)]
    merges = []
    original_merge = model.merge_adapter
    model.merge_adapter = lambda *a, **k: (merges.append(1), original_merge(*a, **k))[1]
    outputs = {}
    for merge in (False, True):
        trainer.merge_adapter_for_generation = merge
        torch.manual_seed(3)
        outputs[merge] = trainer._generate_single_turn(prompts, None, {}, 4)[0]
    assert merges == [1]  # only the merged run merged
    assert outputs[True] == outputs[False]
    assert any(len(c) > 0 for c in outputs[True])
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[name], rtol=0, atol=1e-6)
    assert not any(getattr(m, "merged", False) for m in model.modules())


def test_kv_cache_rollouts_draw_what_trl_generate_draws_until_a_row_ends(model_dir, problems, tmp_path):
    # Both draw one multinomial per active row from the global RNG; generate keeps finished rows in its draws,
    # so the two agree token for token up to the step where the first row ends, and then only in form.
    trainer, inputs = _trainer_and_inputs(model_dir, problems, tmp_path, max_new_tokens=64)
    prompts = [inputs["prompt_ids"][i].tolist() for i in range(8)]
    eos = set(trainer.eos_token_ids)
    outputs = {}
    for engine in ("generate", "kv-cache"):
        trainer.rollout_engine = engine
        torch.manual_seed(11)
        outputs[engine] = trainer._generate_single_turn(prompts, None, {}, 1)[0]
    ours, theirs = outputs["kv-cache"], outputs["generate"]
    cap = trainer.args.max_completion_length
    first_end = min(len(c) for c in ours + theirs)
    assert 1 <= first_end < cap, first_end  # a row ended early: the form check below sees both endings
    assert [c[:first_end] for c in ours] == [c[:first_end] for c in theirs]
    for completion in ours:  # up to and including the first EOS, or cut at the cap, as TRL's own path returns
        ends = [i for i, t in enumerate(completion) if t in eos]
        assert (ends == [len(completion) - 1]) or (not ends and len(completion) == cap)
    torch.manual_seed(11)
    trainer.rollout_engine = "kv-cache"
    assert trainer._generate_single_turn(prompts, None, {}, 1)[0] == ours  # reproducible from the global seed


def test_high_entropy_tokens_match_trl_top_entropy_quantile_and_the_step_records_the_covariance(
        model_dir, problems, tmp_path):
    from training.objective import PolicyOptions, logp_adv_cov

    trainer, inputs = _trainer_and_inputs(model_dir, problems, tmp_path)
    trainer.policy = PolicyOptions(top_entropy_quantile=0.2)
    ours, ours_g = _loss_and_grads(trainer._compute_loss, trainer, inputs)
    trainer.top_entropy_quantile = 0.2
    trl, trl_g = _loss_and_grads(lambda m, x: GRPOTrainer._compute_loss(trainer, m, x), trainer, inputs)
    assert ours.item() == pytest.approx(trl.item(), rel=1e-5, abs=1e-7)
    for a, b in zip(ours_g, trl_g, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)

    # logp_adv_cov: over the tokens the clipped surrogate keeps (unmasked, ratio not cut)
    trainer.policy = PolicyOptions()
    trainer._compute_loss(trainer.model, inputs)
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1),
            torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1), inputs["completion_ids"].size(1))
    ratio, adv = torch.exp(logps - inputs["old_per_token_logps"]), inputs["advantages"].unsqueeze(1)
    cut = ((ratio < 0.8) & (adv < 0)) | ((ratio > 1.28) & (adv > 0))
    keep = inputs["completion_mask"].bool() & ~cut
    assert trainer._step_record["logp_adv_cov"] == pytest.approx(logp_adv_cov(logps, adv, keep), rel=1e-4)
    assert trainer._step_record["cov_token_frac"] == 0.0


def test_policy_options_train_end_to_end_and_record_zero_variance_groups(model_dir, problems, tmp_path):
    def binary_reward(problem, completion):  # 0/1 rewards: many groups have no variance
        return float(any(ch in DIGITS for ch in completion))

    config = small_config(policy_loss="clip-cov", cov_fraction=0.1, clip_cov_bounds=(-10.0, 10.0),
                          advantage="signed", drop_zero_variance_groups=True, par={"lambda0": 0.1})
    assert config.policy_options.cov_fraction == 0.1
    assert small_config(policy_loss="kl-cov").policy_options.cov_fraction == 2e-3
    result = train_expert(model_dir, problems, binary_reward, config, tmp_path, "toy")
    wide = result.steps.pivot(index="step", columns="metric", values="value")
    assert ((0 <= wide["zero_std_group_frac"]) & (wide["zero_std_group_frac"] <= 1)).all()
    assert (wide["zero_std_group_frac"] * 2).round(6).isin([0.0, 1.0, 2.0]).all()  # 2 groups a step
    varied = wide["zero_std_group_frac"] < 1
    assert varied.any() and (wide.loc[varied, "cov_token_frac"] > 0).all()
    assert (wide["response_length"] > 0).all()  # dropped groups leave the loss, not the logged lengths
    with pytest.raises(ValidationError, match="low < high"):
        small_config(clip_cov_bounds=(5.0, 1.0))


def test_off_policy_updates_see_the_same_rollout_batches_as_on_policy(model_dir, problems, tmp_path):
    recorded = {}
    for n in (1, 2):
        result = train_expert(model_dir, problems, digit_reward, small_config(updates_per_batch=n), tmp_path / str(n),
                              "toy")
        wide = result.steps.pivot(index="step", columns="metric", values="value")
        recorded[n] = (len(wide), wide["rollout_batches"].tolist())
    assert recorded[1] == (3, [1.0, 2.0, 3.0])
    assert recorded[2] == (6, [1.0, 1.0, 2.0, 2.0, 3.0, 3.0])  # two updates per batch, three batches either way


def test_aer_can_measure_its_initial_entropy_on_several_batches_before_any_update(model_dir, problems, tmp_path):
    entropy = {"mode": "aer", "coef": 0.01, "delta": 0.005, "c_max": 0.1, "target_fraction": 0.5}
    one = train_expert(model_dir, problems, digit_reward, small_config(entropy=entropy), tmp_path / "one", "toy")
    four = train_expert(model_dir, problems, digit_reward, small_config(entropy={**entropy, "initial_batches": 4}),
                        tmp_path / "four", "toy")
    wide_one = one.steps.pivot(index="step", columns="metric", values="value")
    wide = four.steps.pivot(index="step", columns="metric", values="value")
    assert one.initial_entropy == pytest.approx(wide_one.loc[1, "entropy"])  # 1: the first training batch
    assert four.initial_entropy != pytest.approx(wide.loc[1, "entropy"])  # 4: measured before step 1
    assert wide["entropy_target"].tolist() == pytest.approx([0.5 * four.initial_entropy] * 3)
    assert wide["rollout_batches"].tolist() == [1.0, 2.0, 3.0]  # the measuring batches are not training data

    # the measurement is of the policy as it is: the same seed gives the same value, and it trains nothing
    trainer, _ = _trainer_and_inputs(model_dir, problems, tmp_path / "m")
    before = [p.detach().clone() for p in trainer.model.parameters()]
    first = trainer.measure_initial_entropy(2, seed=5)
    assert first == pytest.approx(trainer.measure_initial_entropy(2, seed=5)) and first > 0
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


def test_training_logs_reach_tensorboard_and_a_missing_tracker_is_named(model_dir, problems, tmp_path):
    result = train_expert(model_dir, problems, digit_reward, small_config(report_to=["tensorboard"]), tmp_path, "toy")
    events = list((tmp_path / "checkpoints").rglob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0 and result.adapter_dir.exists()
    with pytest.raises(TrainingError, match=r"train.report_to names mlflow, which is not installed; pip install mlflow"):
        train_expert(model_dir, problems, digit_reward, small_config(report_to=["mlflow"]), tmp_path / "m", "toy")


def test_activation_checkpointing_is_on_with_cuda_and_off_on_cpu(monkeypatch, tmp_path):
    assert small_config().checkpointing_on() is False  # this machine has no CUDA
    assert grpo_config(small_config(), tmp_path).gradient_checkpointing is False
    assert grpo_config(small_config(gradient_checkpointing=True), tmp_path).gradient_checkpointing is True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert small_config().checkpointing_on() is True
    assert small_config(gradient_checkpointing=False).checkpointing_on() is False


def test_the_importance_sampling_mode_reaches_trl_and_its_corrections_are_counted(tmp_path):
    from types import SimpleNamespace

    from training.batches import is_corrected

    default = grpo_config(small_config(), tmp_path)
    assert default.vllm_importance_sampling_correction
    assert (default.vllm_importance_sampling_mode, default.vllm_importance_sampling_clip_max) == ("token_truncate", 3.0)
    masked = grpo_config(small_config(vllm_is_mode="sequence_mask", vllm_is_cap=2.0), tmp_path)
    assert (masked.vllm_importance_sampling_mode, masked.vllm_importance_sampling_clip_max) == ("sequence_mask", 2.0)
    assert not grpo_config(small_config(vllm_is_mode="off"), tmp_path).vllm_importance_sampling_correction

    ratios = torch.tensor([[0.5, 1.0, 3.0], [0.0, 1.2, 2.9]])  # TRL's output: capped at 3 (truncate), 0 (mask)
    truncate = SimpleNamespace(vllm_importance_sampling_mode="token_truncate", vllm_importance_sampling_clip_max=3.0,
                               vllm_importance_sampling_clip_min=None)
    mask = SimpleNamespace(**{**vars(truncate), "vllm_importance_sampling_mode": "token_mask"})
    assert is_corrected(ratios, truncate).tolist() == [[0, 0, 1], [0, 0, 0]]
    assert is_corrected(ratios, mask).tolist() == [[0, 0, 1], [1, 0, 0]]


def test_a_token_budget_sizes_the_micro_batches(tmp_path):
    lengths = dict(prompts_per_step=32, num_generations=8, max_prompt_length=1024, max_new_tokens=2048)
    assert TrainConfig(**lengths, micro_batch_tokens=12288).micro_batch(256) == 4  # 4 x 3,072 tokens
    assert TrainConfig(**lengths, micro_batch_tokens=10000).micro_batch(256) == 2  # 3 fits, but must divide 256
    assert TrainConfig(**lengths, micro_batch_tokens=100).micro_batch(256) == 1  # never below one completion
    assert TrainConfig(**lengths, micro_batch_tokens=12288, micro_batch_size=8).micro_batch(256) == 8
    args = grpo_config(small_config(prompts_per_step=4, num_generations=4, max_prompt_length=24, max_new_tokens=8,
                                    micro_batch_tokens=64), tmp_path)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (2, 8)


def test_completions_end_at_the_generation_configs_and_the_tokenizers_eos():
    from types import SimpleNamespace

    from polymath.decoding import eos_ids

    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[7, 9]))
    assert eos_ids(model, SimpleNamespace(eos_token_id=3)) == [7, 9, 3]  # as vLLM and TRL stop
    assert eos_ids(model, SimpleNamespace(eos_token_id=9)) == [7, 9]
    with pytest.raises(ModelError, match="no EOS token"):
        eos_ids(SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=None)),
                SimpleNamespace(eos_token_id=None))
