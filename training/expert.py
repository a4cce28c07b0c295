"""Train one domain expert: a LoRA adapter (or a full model) by GRPO on one domain's problems.

    result = train_expert(model_dir, problems, reward_fn, TrainConfig(), out_dir, "arithmetic")

writes to out_dir:
    adapter/          peft adapter (save_pretrained, safetensors); model/ instead for full fine-tuning
    steps.parquet     one row per (step, metric): expert, step, metric, value
    curves.png        entropy and reward against step
    checkpoints/      only when config.save_steps > 0; a rerun resumes from the last one
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from datasets import Dataset
from transformers import PrinterCallback, ProgressCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOConfig

from polymath.records import Problem
from polymath.errors import ConfigError, DataError, ModelError, TrainingError
from training.config import TrainConfig
from training.controllers import STATE_FILE, Controllers
from training.curves import plot_curves
from training.grpo import PolymathGRPOTrainer
from training.step_record import STEP_METRICS, step_records
from polymath.loading import LoadOptions, load_model
from polymath.threads import torch_threads
from polymath.prompting import format_prompt
from polymath.workspace import ADAPTER, FULL_MODEL

RewardFn = Callable[[Problem, str], float]


@dataclass
class TrainResult:
    """What one expert's training produced."""

    adapter_dir: Path
    """The saved adapter folder (the whole model's folder for full fine-tuning)."""
    steps: pd.DataFrame
    """Long format: expert, step, metric, value; one row per optimizer step and STEP_METRICS name."""
    initial_entropy: float
    """Token-mean entropy of the untrained policy on the first rollout batch (nats)."""
    seconds: float
    """Wall time of the whole call, loading and saving included."""
    resumed_from_step: int | None = None
    """The checkpoint's step this call resumed from (None: it trained from the start)."""


def grpo_config(config: TrainConfig, output_dir: Path, processes: int = 1) -> GRPOConfig:
    """The TRL GRPOConfig equivalent of a TrainConfig (token-mean 'dapo' loss, no eval, log every step).

    With ``processes`` > 1 each process takes its share of every update's completions (TRL's rollout batch is
    per device x processes x steps per generation), so the global batch is the one-process batch.
    """
    cuda = torch.cuda.is_available()
    per_process, rest = divmod(config.completions_per_update, processes)
    if rest:
        raise ConfigError(f"train.processes ({processes}) must divide the {config.completions_per_update} "
                          "completions of one update; change train.processes or train.prompts_per_step")
    micro = config.micro_batch(per_process)
    if per_process % micro:
        raise ConfigError(f"train.micro_batch_size ({micro}) must divide each process's {per_process} completions "
                          "per update; change train.micro_batch_size or train.processes")
    accumulation = per_process // micro
    return GRPOConfig(
        output_dir=str(output_dir),
        max_steps=config.optimizer_steps,
        learning_rate=config.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=config.max_grad_norm,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        # one rollout batch feeds updates_per_batch optimizer steps
        steps_per_generation=accumulation * config.updates_per_batch,
        num_generations=config.num_generations,
        temperature=config.temperature,
        top_p=1.0,
        top_k=0,
        max_completion_length=config.max_new_tokens,
        loss_type="dapo",
        epsilon=config.eps_low,
        epsilon_high=config.eps_high,
        num_iterations=config.num_iterations,
        beta=config.beta,
        use_vllm=config.rollouts_on_vllm(),
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=config.vllm_memory_share,
        seed=config.seed,
        data_seed=config.seed,
        bf16=bool(config.bf16 and cuda),
        fp16=False,
        use_cpu=not cuda,
        gradient_checkpointing=config.checkpointing_on(),
        vllm_importance_sampling_correction=config.vllm_is_mode != "off",
        vllm_importance_sampling_mode="token_truncate" if config.vllm_is_mode == "off" else config.vllm_is_mode,
        vllm_importance_sampling_clip_max=config.vllm_is_cap,
        logging_steps=1,
        logging_strategy="steps",
        save_strategy="steps" if config.save_steps > 0 else "no",
        save_steps=max(config.save_steps, 1),
        eval_strategy="no",
        report_to=list(config.report_to) or "none",
        disable_tqdm=not config.show_progress,
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
        remove_unused_columns=False,
        log_completions=False,
    )


def build_dataset(problems: Sequence[Problem], tokenizer) -> Dataset:
    """The TRL dataset: ``prompt`` (formatted for the tokenizer) and ``problem_id``."""
    return Dataset.from_dict(
        {"prompt": [format_prompt(p, tokenizer) for p in problems], "problem_id": [p.id for p in problems]}
    )


def make_reward_func(problems: Sequence[Problem], reward_fn: RewardFn, expert: str):
    """Adapt reward_fn(problem, completion) to TRL's batched reward-function signature."""
    by_id = {p.id: p for p in problems}

    def reward(prompts, completions, problem_id, **_):
        values = []
        for pid, completion in zip(problem_id, completions, strict=True):
            value = float(reward_fn(by_id[pid], completion))
            if not (0.0 <= value <= 1.0):
                raise TrainingError(
                    f"expert {expert!r}: the reward function returned {value!r} for problem {pid!r}; "
                    "rewards must lie in [0, 1]: fix the domain's verifier"
                )
            values.append(value)
        return values

    reward.__name__ = "reward"
    return reward


def steps_frame(log_history: list[dict], expert: str) -> pd.DataFrame:
    """Long-format step table (expert, step, metric, value) from a Trainer log history."""
    rows = [
        (expert, rec["step"], name, rec[name]) for rec in step_records(log_history) for name in STEP_METRICS
    ]
    frame = pd.DataFrame(rows, columns=["expert", "step", "metric", "value"])
    return frame.astype({"expert": "string", "step": "int64", "metric": "string", "value": "float64"})


def _check_inputs(problems: Sequence[Problem], config: TrainConfig, expert: str) -> None:
    if not problems:
        raise DataError(f"expert {expert!r} has no training problems; select at least one problem for its domain")
    if len(problems) < config.prompts_per_step:
        # TRL's sampler drops incomplete prompt batches: fewer problems than one step's batch yields no step.
        raise DataError(
            f"expert {expert!r} has {len(problems)} problems but train.prompts_per_step is "
            f"{config.prompts_per_step}; lower prompts_per_step or select more problems for this domain"
        )
    seen: set[str] = set()
    for p in problems:
        if p.id in seen:
            raise DataError(f"expert {expert!r}: problem id {p.id!r} appears twice; problem ids must be unique")
        seen.add(p.id)


def _load(model_dir: Path, load: LoadOptions | None = None):
    model, tokenizer = load_model(model_dir, load)
    if tokenizer.pad_token is None:
        raise ModelError(f"the tokenizer in {model_dir} has neither a pad nor an eos token; add an eos token")
    # TRL pads prompts itself (left) and truncation is ours (_tokenize_prompts keeps the end).
    tokenizer.padding_side = "left"
    return model, tokenizer


def _prompt_budget(model, config: TrainConfig, model_dir: Path) -> int | None:
    """Prompt tokens kept: train.max_prompt_length, capped so prompt + completion fit the model's positions."""
    positions = getattr(model.config, "max_position_embeddings", None)
    if not positions:
        return config.max_prompt_length
    room = positions - config.max_new_tokens
    if room < 1:
        raise ConfigError(
            f"train.max_new_tokens ({config.max_new_tokens}) leaves no room for a prompt in the "
            f"{positions} positions of {model_dir / 'config.json'}; lower train.max_new_tokens"
        )
    return room if config.max_prompt_length is None else min(config.max_prompt_length, room)


def _lora_config(config: TrainConfig):
    if config.lora.full_finetune:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=list(config.lora.target_modules),
        task_type="CAUSAL_LM",
    )


class _QuietProgress(ProgressCallback):
    """A progress bar without a printed line per logged step."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        return None


def train_expert(
    model_dir: Path,
    problems: list[Problem],
    reward_fn: RewardFn,
    config: TrainConfig,
    out_dir: Path,
    expert: str,
    load: LoadOptions | None = None,
) -> TrainResult:
    """Train one expert by GRPO and write its adapter, step table and curves under ``out_dir``.

    reward_fn(problem, completion) must return a float in [0, 1]. If
    out_dir/checkpoints holds a checkpoint (config.save_steps > 0 on an
    interrupted run), training resumes from it with the controllers' state.
    """
    started = time.perf_counter()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    _check_inputs(problems, config, expert)
    _check_trackers(config.report_to)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with torch_threads(config.cpu_threads):
        model, tokenizer = _load(model_dir, load)
        out_dir.mkdir(parents=True, exist_ok=True)
        checkpoints = out_dir / "checkpoints"
        trainer = _trainer(model, tokenizer, problems, reward_fn, config, checkpoints, expert,
                           _prompt_budget(model, config, model_dir))
        resume = _fit(trainer, config, checkpoints)
        adapter_dir, steps = _save(trainer, tokenizer, config, out_dir, expert)
    initial = trainer.controllers.initial_entropy
    return TrainResult(
        adapter_dir=adapter_dir,
        steps=steps,
        initial_entropy=math.nan if initial is None else initial,
        seconds=time.perf_counter() - started,
        resumed_from_step=int(Path(resume).name.rsplit("-", 1)[1]) if resume else None,
    )


def last_complete_checkpoint(checkpoints: Path) -> str | None:
    """The newest checkpoint written to the end, or None. A process killed while saving leaves a checkpoint
    folder without the controller state (written last, after TRL's files): such folders are removed."""
    if not checkpoints.is_dir():
        return None
    found = sorted(checkpoints.glob(f"{PREFIX_CHECKPOINT_DIR}-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    for folder in reversed(found):
        if (folder / STATE_FILE).exists() and (folder / "trainer_state.json").exists():
            return str(folder)
        shutil.rmtree(folder, ignore_errors=True)
    return None


#: The module each tracker of ``train.report_to`` needs, as transformers' integrations look for it.
TRACKER_MODULES = {"tensorboard": ("tensorboard", "tensorboardX"), "trackio": ("trackio",), "wandb": ("wandb",),
                   "mlflow": ("mlflow",)}


def _check_trackers(trackers: Sequence[str]) -> None:
    import importlib.util

    missing = [t for t in trackers if not any(importlib.util.find_spec(m) for m in TRACKER_MODULES[t])]
    if missing:
        hint = "pip install 'polymath[tracking]'" if missing == ["tensorboard"] else "pip install " + " ".join(missing)
        raise TrainingError(f"train.report_to names {', '.join(missing)}, which is not installed; {hint}, or "
                            "remove it from train.report_to")


def _trainer(model, tokenizer, problems, reward_fn: RewardFn, config: TrainConfig, checkpoints: Path, expert: str,
             max_prompt_length: int | None) -> PolymathGRPOTrainer:
    """The GRPO trainer of one expert, its controllers fresh (a resumed run loads theirs with the checkpoint)."""
    args = grpo_config(config, checkpoints, int(os.environ.get("WORLD_SIZE", "1")))
    try:
        trainer = PolymathGRPOTrainer(
            model=model,
            reward_funcs=[make_reward_func(problems, reward_fn, expert)],
            args=args,
            train_dataset=build_dataset(problems, tokenizer),
            processing_class=tokenizer,
            peft_config=_lora_config(config),
            controllers=Controllers(config.entropy, config.par, config.optimizer_steps),
            token_filter=config.token_filter,
            policy=config.policy_options,
            max_prompt_length=max_prompt_length,
            merge_adapter_for_generation=config.merge_lora_for_rollouts and not config.lora.full_finetune,
            rollout_engine=config.rollout_engine,
        )
    except ValueError as exc:
        # TRL rejects some combinations (e.g. target modules missing from the model) with ValueError.
        raise TrainingError(f"expert {expert!r}: TRL refused the training setup: {exc}") from None
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if config.show_progress:
        trainer.add_callback(_QuietProgress)
    return trainer


def _fit(trainer: PolymathGRPOTrainer, config: TrainConfig, checkpoints: Path) -> str | None:
    """Train, from the newest complete checkpoint when there is one; returns that checkpoint (None: from the start)."""
    resume = last_complete_checkpoint(checkpoints)
    controllers = trainer.controllers
    if resume is None and config.entropy.initial_batches > 1 and controllers.need_initial:
        # A resumed run has its initial entropy in the checkpoint's controller state.
        controllers.observe_initial(
            trainer.measure_initial_entropy(config.entropy.initial_batches, seed=config.seed + 1))
    trainer.train(resume_from_checkpoint=resume)
    if trainer.accelerator.is_main_process and checkpoints.is_dir() and not any(checkpoints.iterdir()):
        checkpoints.rmdir()
    return resume


def _save(trainer: PolymathGRPOTrainer, tokenizer, config: TrainConfig, out_dir: Path,
          expert: str) -> tuple[Path, pd.DataFrame]:
    """Write the adapter (the whole model for full fine-tuning), the step table and the curves."""
    # With several processes (training/launch.py) every rank trains; the main one writes the outputs.
    main = trainer.accelerator.is_main_process
    if config.lora.full_finetune:
        adapter_dir = out_dir / FULL_MODEL
        trainer.save_model(str(adapter_dir))  # every rank: DeepSpeed gathers the shards
        if main:
            tokenizer.save_pretrained(adapter_dir)
    else:
        adapter_dir = out_dir / ADAPTER
        if main:
            trainer.model.save_pretrained(adapter_dir, safe_serialization=True)

    steps = steps_frame(trainer.state.log_history, expert)
    if steps.empty:
        raise TrainingError(f"expert {expert!r}: training logged no step; check train.steps >= 1")
    if main:
        tmp = out_dir / "steps.parquet.tmp"
        steps.to_parquet(tmp, index=False)
        tmp.replace(out_dir / "steps.parquet")
        plot_curves(steps, out_dir / "curves.png", title=f"GRPO expert: {expert}")
    return adapter_dir, steps
