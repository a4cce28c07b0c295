"""TRL's GRPOTrainer with polymath's objective and controllers.

TRL keeps generation (HF generate or colocated vLLM), reward plumbing,
advantages, batching, accelerate and checkpointing. We override:

- ``_compute_loss``: the per-token loss is training/objective.py's
  ``grpo_loss`` (clip-higher, PAR, token filter, per-sequence entropy bonus,
  KL), fed by TRL's own fused log-prob/entropy forward;
- ``_generate_single_turn``: without vLLM, rollouts come from polymath's
  KV-cached sampling loop (training/rollouts.py) unless ``rollout_engine="generate"``;
- ``_generate_and_score_completions``: adds each completion's entropy weight
  (AER difficulty scaling from its group's accuracy) to the batch and keeps
  the rollout's reward, accuracy and length for the step record;
- ``log``: puts the step record (exact metric names: training/step_record.py) into
  TRL's log, hence ``state.log_history``;
- checkpoint save/load: the controllers' state travels with the checkpoint.

Written against TRL 1.16 (``_compute_loss`` / ``_get_per_token_logps_and_entropies``
signatures); tests/test_training_trainer.py checks our loss equals TRL's own
"dapo" loss when entropy control is off.
"""

from __future__ import annotations

import math
import os

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer

from polymath.errors import TrainingError
from training.batches import FORWARD_KEYS, is_corrected, trim_completions
from training.controllers import Controllers
from training.objective import (
    TOKEN_FILTERS,
    PolicyOptions,
    grpo_loss,
    signed_advantages,
    zero_variance_groups,
)
from training.rollouts import ROLLOUT_ENGINES, kv_cache_rollouts, merged_adapter
from training.run_state import load_run_state, save_run_state
from training.step_record import StepWindow, covariance_split

# A completion counts as correct when its reward reaches 1 (the verifiers give 1.0 for a correct answer and
# partial credit below it); the tolerance absorbs float noise from weighted reward sums.
ACCURACY_THRESHOLD = 1.0 - 1e-6

class PolymathGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose loss and per-step record are polymath's.

    Extra arguments: ``controllers`` (entropy coefficient and PAR lambda,
    advanced once per optimizer step), ``token_filter`` ("all", "nonneg",
    "nonpos"), ``policy`` (the policy term's variant and its advantages, a
    :class:`PolicyOptions`), ``max_prompt_length`` (prompts keep their last tokens),
    ``merge_adapter_for_generation`` (sample non-vLLM rollouts from the
    adapter merged into float32 base weights, unmerged right after) and
    ``rollout_engine`` (without vLLM: "kv-cache", training/rollouts.py, or TRL's "generate").
    The GRPOConfig must use ``loss_type="dapo"`` (token-mean) and leave TRL's
    own entropy options off: the controllers replace them.
    """

    def __init__(
        self,
        *args,
        controllers: Controllers,
        token_filter: str = "all",
        policy: PolicyOptions | None = None,
        max_prompt_length: int | None = None,
        merge_adapter_for_generation: bool = False,
        rollout_engine: str = "kv-cache",
        **kwargs,
    ):
        if token_filter not in TOKEN_FILTERS:
            raise TrainingError(f"token_filter must be one of {TOKEN_FILTERS}, got {token_filter!r}")
        if rollout_engine not in ROLLOUT_ENGINES:
            raise TrainingError(f"rollout_engine must be one of {ROLLOUT_ENGINES}, got {rollout_engine!r}")
        self.rollout_engine = rollout_engine
        self.controllers = controllers
        self.token_filter = token_filter
        self.policy = policy or PolicyOptions()
        # clip-cov's random token choice, seeded so that a run (and its resume) is reproducible.
        self._cov_generator = torch.Generator().manual_seed(int(kwargs["args"].seed) if "args" in kwargs else 0)
        self.max_prompt_length = max_prompt_length
        self.merge_adapter_for_generation = merge_adapter_for_generation
        self._gathered_rewards: torch.Tensor | None = None
        self._rollout_stats: dict[str, float] = {}
        self._rollout_batches = 0  # training generation batches so far (the data an update has seen)
        self._step_record: dict[str, float] = {}
        self._window = StepWindow()
        super().__init__(*args, **kwargs)
        self._check_supported()

    def _check_supported(self) -> None:
        a = self.args
        unsupported = []
        if a.loss_type != "dapo":
            unsupported.append(f"loss_type={a.loss_type!r} (use 'dapo': token-mean aggregation)")
        if a.importance_sampling_level != "token":
            unsupported.append(f"importance_sampling_level={a.importance_sampling_level!r} (use 'token')")
        if a.top_entropy_quantile < 1.0:
            unsupported.append(f"top_entropy_quantile={a.top_entropy_quantile} (use 1.0)")
        if a.off_policy_mask_threshold is not None:
            unsupported.append("off_policy_mask_threshold (leave None)")
        if a.delta is not None:
            unsupported.append("delta (two-sided clipping; leave None)")
        if a.entropy_coef != 0.0 or a.use_adaptive_entropy:
            unsupported.append("TRL's entropy_coef/use_adaptive_entropy (use TrainConfig.entropy instead)")
        if unsupported:
            raise TrainingError(
                "PolymathGRPOTrainer does not support these GRPOConfig settings: "
                + "; ".join(unsupported)
                + ". Build the config with training.expert.grpo_config(TrainConfig)."
            )

    # ---- rollouts -------------------------------------------------------------------------------------

    def _tokenize_prompts(self, prompts: list):
        prompt_ids, images, multimodal_fields = super()._tokenize_prompts(prompts)
        if self.max_prompt_length is not None and images is None:
            # Keep the end of the prompt: it holds the question's tail and the answer cue.
            prompt_ids = [ids[-self.max_prompt_length :] for ids in prompt_ids]
        return prompt_ids, images, multimodal_fields

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        own = (self.rollout_engine == "kv-cache" and not self.use_vllm and images is None and not multimodal_fields
               and not self.use_transformers_continuous_batching)
        model = self.accelerator.unwrap_model(self.model)
        with merged_adapter(model, self.merge_adapter_for_generation and not self.use_vllm):
            if own:
                return kv_cache_rollouts(self, prompt_ids), None
            return super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._gathered_rewards = rewards_per_func
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        rewards_per_func = self._gathered_rewards
        weights = self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
        rewards = (rewards_per_func * weights).nansum(dim=1)
        unscorable = torch.isnan(rewards_per_func).all(dim=1)
        correct = (rewards >= ACCURACY_THRESHOLD).float()
        mode = "train" if self.model.training else "eval"
        group = self.num_generations if mode == "train" else self.num_generations_eval
        group_accuracy = correct.view(-1, group).mean(dim=1).repeat_interleave(group)
        entropy_weight = self.controllers.entropy.sequence_weights(group_accuracy)
        local = slice(self.accelerator.process_index * len(inputs), (self.accelerator.process_index + 1) * len(inputs))
        output["entropy_weight"] = entropy_weight[local].to(output["advantages"].device)
        if self.policy.advantage == "signed":
            output["advantages"] = signed_advantages(correct[local]).to(output["advantages"].device)
        flat = zero_variance_groups(rewards, group)
        if self.policy.drop_zero_variance_groups and mode == "train":
            # The loss skips these rows; completion_mask stays whole, so that what is logged of the policy
            # (entropy, its quantiles, lengths) covers the same tokens as in every other arm.
            keep = (~flat[local]).to(output["completion_mask"].device)
            output["group_keep"] = keep.to(output["completion_mask"].dtype)
            loss_mask = output["completion_mask"] * keep.unsqueeze(1).to(output["completion_mask"].dtype)
            if output.get("tool_mask") is not None:
                loss_mask = loss_mask * output["tool_mask"]
            output["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()

        if mode == "train":
            self._rollout_batches += 1
        lengths = self.accelerator.gather(output["completion_mask"].sum(dim=1).float())
        scored = rewards[~unscorable]
        self._rollout_stats = {
            "reward": scored.mean().item() if scored.numel() else math.nan,
            "accuracy": correct[~unscorable].mean().item() if scored.numel() else math.nan,
            "response_length": lengths.mean().item(),
            "zero_std_group_frac": flat.view(-1, group)[:, 0].float().mean().item(),
            "rollout_batches": float(self._rollout_batches),
        }
        return output

    def measure_initial_entropy(self, batches: int, seed: int) -> float:
        """Token-mean entropy of the policy as it is now over ``batches`` rollout batches of the training
        prompts (drawn with ``seed``), sampled and scored as training samples them; nothing is updated and
        nothing is counted as training data."""
        prompts = self.args.generation_batch_size // self.num_generations
        generator = torch.Generator().manual_seed(seed)
        self.model.train()
        # Sampling draws from a forked, seeded RNG: the measurement is reproducible and leaves the training
        # run's random stream where it was.
        with torch.random.fork_rng(devices=[] if not torch.cuda.is_available() else None):
            torch.manual_seed(seed)
            entropy_sum, tokens = self._sample_entropy(batches, prompts, generator)
        self._rollout_batches = 0
        self._metrics["train"].clear()
        return entropy_sum / max(tokens, 1.0)

    def _sample_entropy(self, batches: int, prompts: int, generator: torch.Generator) -> tuple[float, float]:
        entropy_sum, tokens = 0.0, 0.0
        for _ in range(batches):
            rows = torch.randperm(len(self.train_dataset), generator=generator)[:prompts].tolist()
            inputs = [self.train_dataset[i] for i in rows for _ in range(self.num_generations)]
            out = self._generate_and_score_completions(inputs)
            ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
            attention = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
            with torch.no_grad():
                _, entropies, _ = self._get_per_token_logps_and_entropies(
                    self.model, ids, attention, out["completion_ids"].size(1), compute_entropy=True)
            mask = out["completion_mask"].float()
            stats = self.accelerator.reduce(torch.stack([(entropies * mask).sum(), mask.sum()]), reduction="sum")
            entropy_sum, tokens = entropy_sum + stats[0].item(), tokens + stats[1].item()
        return entropy_sum, tokens

    # ---- loss -----------------------------------------------------------------------------------------

    def _compute_loss(self, model, inputs):
        if self.args.steps_per_generation > 1:  # a micro-batch of a rollout batch; a whole batch is never cut
            inputs = trim_completions(inputs)
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        logits_to_keep = completion_ids.size(1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        # The tokens the loss reads: all of them, less the rows of dropped zero-variance groups.
        loss_mask = mask if "group_keep" not in inputs else mask * inputs["group_keep"].unsqueeze(1)

        logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention_mask,
            logits_to_keep,
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            **{key: inputs.get(key) for key in FORWARD_KEYS},
        )
        old_logps = inputs.get("old_per_token_logps")
        old_logps = logps.detach() if old_logps is None else old_logps

        mode = "train" if self.model.training else "eval"
        training = mode == "train"
        # Token-mean over the optimizer step: num_items_in_batch counts the tokens of the whole generation batch,
        # which is split into steps_per_generation micro-batches, current_gradient_accumulation_steps per step.
        normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        if training:
            normalizer = normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation

        fmask = mask.float()
        with torch.no_grad():
            ent_stats = self.accelerator.reduce(
                torch.stack([(entropies.detach() * fmask).sum(), fmask.sum()]), reduction="sum"
            )
        batch_entropy = (ent_stats[0] / ent_stats[1].clamp(min=1.0)).item()
        coef = self.controllers.entropy.applied_coef(batch_entropy)
        entropy_coefs = coef * inputs["entropy_weight"] if coef != 0.0 else None
        use_is = self.use_vllm and self.vllm_importance_sampling_correction

        out = grpo_loss(
            logps,
            old_logps,
            inputs["advantages"],
            loss_mask,
            eps_low=self.epsilon_low,
            eps_high=self.epsilon_high,
            par_lambda=self.controllers.par.value,
            token_filter=self.token_filter,
            entropies=entropies,
            entropy_coefs=entropy_coefs,
            ref_logp=inputs.get("ref_per_token_logps") if self.beta != 0.0 else None,
            beta=self.beta,
            is_ratio=inputs["importance_sampling_ratio"] if use_is else None,
            normalizer=normalizer,
            policy=self.policy,
            generator=self._cov_generator,
        )
        loss = out.loss
        if self.aux_loss_enabled:
            accumulation = self.current_gradient_accumulation_steps if training else 1.0
            loss = loss + self.router_aux_loss_coef * aux_loss / accumulation

        if training:
            adv = inputs["advantages"]
            adv = adv.unsqueeze(1) if adv.dim() == 1 else adv
            lmask = loss_mask.float()
            self._window.add(
                entropies=entropies.detach()[mask.bool()],
                entropy_sum=ent_stats[0],
                tokens=ent_stats[1],
                loss_tokens=lmask.sum(),
                clipped_low=(out.clipped_low * lmask).sum(),
                clipped_high=(out.clipped_high * lmask).sum(),
                positive=((adv > 0) * lmask).sum(),
                coef=coef,
                kl=None if out.kl is None else (out.kl * lmask).sum(),
                selected=None if out.cov_selected is None else (out.cov_selected * lmask).sum(),
                logp=logps.detach()[out.gradient_mask],
                adv=adv.to(logps.dtype).expand_as(logps)[out.gradient_mask],
                is_corrected=None if not use_is else (is_corrected(inputs["importance_sampling_ratio"], self)
                                                      .expand_as(lmask) * lmask).sum(),
            )
            if self.accelerator.sync_gradients:
                self._close_step()
        return loss

    def _close_step(self) -> None:
        """Optimizer-step boundary: build the step record, then advance the controllers."""
        w = self._window
        names = StepWindow.NAMES
        reduced = self.accelerator.reduce(torch.stack([w.sums[n] for n in names]).to(self.accelerator.device),
                                          reduction="sum")
        totals = dict(zip(names, reduced.tolist(), strict=True))
        tokens = max(w.tokens, 1.0)
        entropy = w.entropy_sum / tokens
        values = torch.cat(w.entropies) if w.entropies else torch.zeros(0)
        padded = self.accelerator.pad_across_processes(values.float(), dim=0, pad_index=-1.0)
        gathered = self.accelerator.gather(padded)
        gathered = gathered[gathered >= 0]
        if gathered.numel():
            p10, p90 = torch.quantile(gathered, torch.tensor([0.1, 0.9], device=gathered.device)).tolist()
        else:
            p10 = p90 = math.nan
        par_lambda = self.controllers.par.value
        self.controllers.end_step(entropy)
        target = self.controllers.entropy.target
        record = {
            **self._rollout_stats,
            "entropy": entropy,
            "entropy_p10": p10,
            "entropy_p90": p90,
            "entropy_coef": sum(w.coefs) / len(w.coefs),
            "entropy_target": math.nan if target is None else target,
            "par_lambda": par_lambda,
            # the threshold lambda was moved by at the end of this step (entropy-guided schedules only)
            "par_threshold": math.nan if self.controllers.par.threshold is None
            or self.controllers.par.settings.schedule != "entropy-guided" else self.controllers.par.threshold,
        }
        # fractions of the tokens the loss reads (all of them but the rows of dropped zero-variance groups)
        loss_tokens = max(totals["loss_tokens"], 1.0)
        for name, total in (("pos_adv_token_frac", "positive"), ("clip_frac_low", "clipped_low"),
                            ("clip_frac_high", "clipped_high"), ("cov_token_frac", "selected"), ("kl", "kl"),
                            ("is_corrected_frac", "is_corrected")):
            if total in w.measured or name != "kl":  # kl only where measured; 0 corrections without vLLM
                record[name] = totals[total] / loss_tokens
        record["logp_adv_cov"], record["logp_adv_cov_pos"], record["logp_adv_cov_neg"] = covariance_split(totals)
        self._step_record = record
        self._window = StepWindow()

    # ---- logging and checkpoints ----------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training and self._step_record:
            # One value per name: TRL averages each list, and ours replace TRL's same-named entries.
            for name, value in self._step_record.items():
                self._metrics["train"][name] = [value]
            self._step_record = {}
        super().log(logs, start_time)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            save_run_state(self, folder)
            self.controllers.save(folder)  # last: it marks the checkpoint complete

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self.controllers.load(checkpoint)
            load_run_state(self, checkpoint)
