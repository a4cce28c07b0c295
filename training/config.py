"""Configuration of one GRPO training run (one expert).

Every field carries a docstring: they become the reference for the ``train``
section of the YAML profiles. Defaults follow the papers cited in
shared/reference/entropy-control.md; the demo profile overrides sizes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from polymath.errors import ConfigError
from polymath.keys import NOT_IN_KEY
from training.entropy_modes import ENTROPY_MODES

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoraSettings(BaseModel):
    """Which parameters are trained: a LoRA adapter (default) or the whole model."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    r: int = Field(16, ge=1)
    """LoRA rank."""
    alpha: float = Field(32.0, gt=0)
    """LoRA scaling numerator (``lora_alpha``); the update is scaled by alpha / r."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the LoRA input; 0 keeps old and new log-probabilities comparable across iterations."""
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    """Module names (suffixes) that receive an adapter; the default covers attention and MLP projections."""
    full_finetune: bool = False
    """Train every weight instead of an adapter; the output is then a whole model, not an adapter."""


class EntropySettings(BaseModel):
    """Entropy bonus: loss = policy_loss - c * H (token mean over the step's batch)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    mode: str = "none"
    """A name of training/entropy_modes.py's registry. none: no bonus. fixed: constant ``coef``. adaptive: Skywork-OR1
    controller on ``target`` (the bonus acts only while H < target). aer: target = ``target_fraction`` x initial
    entropy, per-prompt coefficients scaled by difficulty."""
    coef: float = Field(0.0, ge=0)
    """The coefficient for ``fixed``; the starting coefficient c0 for ``adaptive`` and ``aer``."""
    target: float | None = Field(0.2, gt=0)
    """Target token entropy in nats for ``adaptive`` (Skywork-OR1 uses 0.2)."""
    target_fraction: float = Field(0.4, gt=0, le=1.5)
    """``aer``, and ``adaptive`` with ``target: null``: the target is this fraction of the entropy measured on the
    first rollout batch (before any update), so one setting fits domains whose entropies differ."""
    initial_batches: int = Field(1, ge=1)
    """Rollout batches the initial entropy is measured on. 1: the first training batch (sampled before the
    first update). More: that many batches of the training prompts are sampled from the untrained policy
    before training starts, and no bonus acts before their mean is known; a single batch of 8 prompts is a
    noisy anchor for a target."""
    delta: float = Field(1e-4, gt=0)
    """Coefficient change per optimizer step: c += delta * sign(target - H)."""
    c_min: float = Field(0.0, ge=0)
    """Lower clamp of the adaptive coefficient."""
    c_max: float = Field(0.005, ge=0)
    """Upper clamp of the adaptive coefficient (Skywork-OR1: 0.005)."""
    difficulty_power: float = Field(1.0, ge=0)
    """``aer`` only: a prompt's coefficient is proportional to (1 - group accuracy) ** power, rescaled so the
    batch mean is the global coefficient; 0 gives every prompt the same coefficient."""

    @field_validator("mode")
    @classmethod
    def _registered(cls, name: str) -> str:
        return ENTROPY_MODES.check(name)

    @model_validator(mode="after")
    def _clamp_range(self) -> EntropySettings:
        if self.c_min > self.c_max:
            raise ValueError(
                f"entropy.c_min ({self.c_min}) is larger than entropy.c_max ({self.c_max}); "
                "set c_min <= c_max"
            )
        return self


class ParSettings(BaseModel):
    """Positive-advantage reweighting: the loss of tokens with advantage > 0 is multiplied by lambda."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    schedule: Literal["constant", "staged", "entropy-guided"] = "constant"
    """constant: lambda = lambda0 throughout. staged: 0 for the first ``staged_fraction`` of the steps, then
    linear to 1 at the last step. entropy-guided: lambda -= step when H < delta, else += step, in [0, 1]."""
    lambda0: float = Field(1.0, ge=0, le=1)
    """Starting lambda (constant: the value used throughout; 1 is plain GRPO)."""
    step: float = Field(0.05, gt=0, le=1)
    """entropy-guided: change of lambda per optimizer step."""
    delta: float = Field(0.2, gt=0)
    """entropy-guided: entropy threshold in nats below which lambda decreases."""
    delta_fraction: float | None = Field(None, gt=0)
    """entropy-guided: the threshold as this fraction of the run's initial entropy instead of ``delta`` (measured
    on ``entropy.initial_batches`` rollout batches before training, else the first step's batch); lambda holds
    until it is known."""
    staged_fraction: float = Field(0.5, ge=0, lt=1)
    """staged: fraction of the run trained with lambda = 0 before the linear ramp to 1."""


class TrainConfig(BaseModel):
    """One GRPO run: rollouts, clipped surrogate, entropy control and what is trained."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    steps: int = Field(40, ge=1)
    """Number of rollout batches; the optimizer takes ``steps x updates_per_batch`` steps (TRL ``max_steps``)."""
    lr: float = Field(5e-4, gt=0)
    """Learning rate (AdamW, constant schedule)."""
    prompts_per_step: int = Field(4, ge=1)
    """Distinct prompts sampled per optimizer step; the batch holds prompts_per_step x num_generations completions."""
    num_generations: int = Field(8, ge=2)
    """Completions per prompt (the GRPO group size)."""
    micro_batch_size: int | None = Field(None, ge=1)
    """Completions per forward/backward pass; must divide the step's batch. None: the whole batch at once (or
    as ``micro_batch_tokens`` sizes it)."""
    micro_batch_tokens: int | None = Field(None, ge=1)
    """A token budget per forward/backward pass instead of a count: each process's micro-batch is the most
    completions (a divisor of its share of the update) whose prompt plus completion caps
    (``max_prompt_length + max_new_tokens``) fit the budget, at least one. Activation memory grows with tokens,
    not completions: one budget fits a profile whose lengths change. Ignored when ``micro_batch_size`` is set."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature of the rollouts (log-probabilities are computed at the same temperature)."""
    max_new_tokens: int = Field(32, ge=1)
    """Maximum completion length in tokens."""
    max_prompt_length: int | None = Field(512, ge=1)
    """Prompts longer than this many tokens keep their last tokens (the answer cue); None keeps everything."""
    eps_low: float = Field(0.2, gt=0, lt=1)
    """Lower clip: ratios below 1 - eps_low stop pulling down negative-advantage tokens."""
    eps_high: float = Field(0.28, gt=0)
    """Upper clip (clip-higher, DAPO: 0.28): ratios above 1 + eps_high stop pushing up positive-advantage tokens."""
    updates_per_batch: int = Field(1, ge=1)
    """Optimizer steps per rollout batch: the batch is split into this many mini-batches, one optimizer step
    each (TRL ``steps_per_generation``), so every setting sees the same ``steps`` rollout batches; all but the
    first mini-batch are off-policy. 1 is on-policy."""
    num_iterations: int = Field(1, ge=1)
    """Passes over each rollout batch (GRPO's mu, TRL ``num_iterations``): each multiplies the optimizer steps
    per batch again."""
    beta: float = Field(0.0, ge=0)
    """KL penalty weight against the initial policy (k3 estimator); 0 disables it and skips the reference pass."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient clipping norm."""
    seed: int = 0
    """Seed for adapter initialisation, prompt order and sampling."""
    bf16: bool = False
    """Train in bfloat16 mixed precision; only honoured on CUDA (CPU runs stay in float32)."""
    lora: LoraSettings = Field(default_factory=LoraSettings)
    """Adapter (or full fine-tuning) settings."""
    entropy: EntropySettings = Field(default_factory=EntropySettings)
    """Entropy bonus and its controller."""
    par: ParSettings = Field(default_factory=ParSettings)
    """Positive-advantage reweighting and its schedule."""
    token_filter: Literal["all", "nonneg", "nonpos"] = "all"
    """Tokens the policy gradient uses: all, only advantage >= 0, or only advantage <= 0 (ablations)."""
    policy_loss: Literal["clip", "clip-cov", "kl-cov"] = "clip"
    """The policy term (arXiv 2505.22617): ``clip`` the clipped surrogate; ``clip-cov`` also drops the loss of
    a random ``cov_fraction`` of the tokens whose covariance of log-prob and advantage lies in
    ``clip_cov_bounds``; ``kl-cov`` the unclipped surrogate plus ``kl_cov_coef`` * |logp - old logp| on the
    ``cov_fraction`` of tokens of largest covariance."""
    cov_fraction: float | None = Field(None, gt=0, le=1)
    """clip-cov / kl-cov: fraction of the step's tokens selected. None: the paper's 2e-4 (clip-cov), 2e-3
    (kl-cov)."""
    clip_cov_bounds: tuple[float, float] = (1.0, 5.0)
    """clip-cov: open interval of covariance values a token must lie in to be eligible."""
    kl_cov_coef: float = Field(1.0, ge=0)
    """kl-cov: weight of the |logp - old logp| penalty on the selected tokens."""
    top_entropy_quantile: float = Field(1.0, gt=0, le=1)
    """Policy gradient only on the tokens whose entropy is in the top fraction of the batch's (0.2: the 20%
    highest-entropy tokens, arXiv 2506.01939; TRL's option of the same name); 1 keeps every token."""
    advantage: Literal["grpo", "signed"] = "grpo"
    """``grpo``: group-normalized advantages; ``signed``: +1 for a correct completion, -1 otherwise
    (REINFORCE on +-1 rewards, arXiv 2506.01347; with ``par.lambda0: 0.1``, W-REINFORCE)."""
    drop_zero_variance_groups: bool = False
    """Dynamic sampling's filter (DAPO), without the refill: groups whose rewards are all equal are removed
    from the loss and from its token count (their advantage is 0 anyway; the share is recorded every step as
    ``zero_std_group_frac``)."""
    merge_lora_for_rollouts: bool = True
    """Merge the adapter into the (float32) base weights while rollouts are sampled without vLLM, unmerged right
    after: one matmul per projection instead of three, about a quarter faster sampling for small models."""
    rollout_engine: Literal["kv-cache", "generate"] = "kv-cache"
    """Without vLLM: ``kv-cache`` samples rollouts with polymath's KV-cached loop, which drops each completion
    at its EOS (the loop evaluation samples with); ``generate``: TRL's call of transformers' ``generate``.
    Both sample the same distribution; their random draws differ."""
    use_vllm: bool | Literal["auto"] = False
    """Generate rollouts with vLLM colocated on the training GPU (needs vllm and CUDA); ``auto``: vLLM when it is
    installed and a GPU is present, HF generate otherwise."""
    vllm_memory_share: float = Field(0.3, gt=0, lt=1)
    """vLLM rollouts only: the share of the training GPU the colocated engine reserves (TRL's
    ``vllm_gpu_memory_utilization``); the trainer gets the rest."""
    vllm_is_mode: Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask", "off"] = \
        "token_truncate"
    """vLLM rollouts only: how the gap between vLLM's sampling log-probs and the trainer's is corrected (TRL's
    ``vllm_importance_sampling_mode``). ``token_truncate``: each token's ratio capped at ``vllm_is_cap`` (truncated
    importance sampling, as verl applies it). TRL's default ``sequence_mask`` gives weight 0 to a whole completion
    whose summed per-token gap exceeds log(cap), which drops long completions. ``off``: no correction. The share
    of tokens capped or masked is recorded every step (``is_corrected_frac``)."""
    vllm_is_cap: float = Field(3.0, gt=1)
    """The ratio cap (truncate modes) or the bound above which a ratio is masked (mask modes)."""
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    """Recompute activations in the backward pass instead of keeping them. ``auto``: on with CUDA, where a
    micro-batch of long completions of a billion-parameter model holds tens of GB of activations; off on CPU,
    where the tiny models' activations are small and recomputing only costs time."""
    save_steps: int = Field(0, ge=0)
    """Checkpoint every this many steps (resumable, controller state included); 0 saves none."""
    show_progress: bool = Field(False, json_schema_extra=NOT_IN_KEY)
    """Show a progress bar while training."""
    report_to: list[Literal["tensorboard", "trackio", "wandb", "mlflow"]] = Field(default_factory=list,
                                                                                  json_schema_extra=NOT_IN_KEY)
    """Experiment trackers that receive TRL's training logs (TRL's ``report_to``); TensorBoard event files go to
    the run's ``checkpoints/runs`` folder. Each needs its package (``pip install 'polymath[tracking]'`` for
    TensorBoard). Not part of the run's key: tracking does not change what is trained."""
    processes: int = Field(1, ge=1)
    """Processes that train one expert together (DDP: ``accelerate launch`` on GPUs, ``torchrun`` with gloo on
    CPU): each takes its share of every rollout batch, so the data, the updates and the controllers' inputs are
    those of one process; the entropy and coefficients are reduced over ranks, the same on every one."""
    accelerate_config: str | None = None
    """An accelerate config file for the multi-process launch (DeepSpeed ZeRO, FSDP: ``accelerate config``
    writes one); None: plain DDP."""
    cpu_threads: int | None = Field(None, ge=1)
    """Torch CPU threads during the run (restored afterwards); None keeps torch's setting. Tiny models train
    several times faster with 1 thread, above all on a shared machine."""

    @model_validator(mode="after")
    def _cov_bounds(self) -> TrainConfig:
        low, high = self.clip_cov_bounds
        if not low < high:
            raise ValueError(f"clip_cov_bounds must be (low, high) with low < high, got ({low}, {high})")
        return self

    @model_validator(mode="after")
    def _batch_shape(self) -> TrainConfig:
        batch = self.prompts_per_step * self.num_generations
        if batch % self.updates_per_batch != 0:
            raise ValueError(
                f"updates_per_batch ({self.updates_per_batch}) must divide prompts_per_step x num_generations "
                f"({self.prompts_per_step} x {self.num_generations} = {batch}): each update takes an equal share"
            )
        update = batch // self.updates_per_batch
        if self.micro_batch_size is not None and update % self.micro_batch_size != 0:
            raise ValueError(
                f"micro_batch_size ({self.micro_batch_size}) must divide the completions of one optimizer step "
                f"(prompts_per_step x num_generations / updates_per_batch = {update}); pick a divisor of {update} "
                "or null"
            )
        return self

    def rollouts_on_vllm(self) -> bool:
        """Whether this run's rollouts go through vLLM (``auto`` resolved on this machine)."""
        if self.use_vllm != "auto":
            return bool(self.use_vllm)
        import importlib.util

        import torch

        return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()

    def checkpointing_on(self) -> bool:
        """Whether this run checkpoints activations (``auto`` resolved on this machine)."""
        if self.gradient_checkpointing != "auto":
            return bool(self.gradient_checkpointing)
        import torch

        return torch.cuda.is_available()

    @property
    def policy_options(self):
        """The policy-term settings as the trainer takes them (defaults resolved): a
        :class:`training.objective.PolicyOptions` (imported here: config loading stays free of torch)."""
        from training.objective import PolicyOptions

        fraction = self.cov_fraction or (2e-3 if self.policy_loss == "kl-cov" else 2e-4)
        return PolicyOptions(self.policy_loss, fraction, tuple(self.clip_cov_bounds), self.kl_cov_coef,
                             self.top_entropy_quantile, self.advantage, self.drop_zero_variance_groups)

    @property
    def completions_per_step(self) -> int:
        """Completions of one rollout batch."""
        return self.prompts_per_step * self.num_generations

    @property
    def completions_per_update(self) -> int:
        """Completions behind one optimizer step."""
        return self.completions_per_step // self.updates_per_batch

    @property
    def optimizer_steps(self) -> int:
        return self.steps * self.updates_per_batch * self.num_iterations

    def micro_batch(self, per_process: int) -> int:
        """Completions per forward/backward pass of a process that takes ``per_process`` of each update."""
        if self.micro_batch_size is not None:
            return min(self.micro_batch_size, per_process)
        if self.micro_batch_tokens is None:
            return per_process
        fits = [d for d in range(1, per_process + 1)
                if per_process % d == 0 and d * self.sequence_cap <= self.micro_batch_tokens]
        return max(fits, default=1)

    @property
    def sequence_cap(self) -> int:
        """The longest prompt plus completion one row holds (1,024 prompt tokens when prompts are not cut)."""
        return (self.max_prompt_length or 1024) + self.max_new_tokens

    @property
    def gradient_accumulation_steps(self) -> int:
        return self.completions_per_update // self.micro_batch(self.completions_per_update)


def parse_train_config(data: dict, source: str = "train") -> TrainConfig:
    """Validate a mapping (a YAML ``train`` section) into a TrainConfig.

    Raises ConfigError naming each offending key as ``source.path.to.key``.
    """
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in (source, *err["loc"]))
            problems.append(f"{where}: {err['msg']}")
        raise ConfigError(
            "invalid training config:\n  " + "\n  ".join(problems)
            + "\nfix the keys above (see training/config.py for each field's meaning and range)"
        ) from None
