"""A GPU memory estimate of one training process, from the model's config.json and the train settings.

Counted per GPU, in bytes: the base weights in the training dtype; the trained parameters' float32 master copy,
gradient and two Adam moments (16 bytes each: the adapter's for LoRA, every weight's for full fine-tuning); the
activations of one micro-batch of the longest prompt plus completion; the completion logits the loss reads;
and the share of the card a colocated vLLM engine reserves. Activations follow Korthikanti et al. 2022
("Reducing Activation Recomputation in Large Transformer Models"): 34 h bytes per token and layer in 16-bit with
fused attention (no s x s scores kept), whose MLP part (19 h, for a 4h MLP) is scaled to the model's
intermediate size; with checkpointing, each layer keeps only its input (2 h bytes per token) and one layer at a
time is recomputed in full. It is an estimate for planning (allocator fragmentation and CUDA context come on top),
not a measurement.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from polymath.errors import ModelError

GIB = 1024**3


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of a decoder's config.json."""

    vocab: int
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    tied: bool

    @classmethod
    def from_folder(cls, folder: Path | str) -> Shape:
        path = Path(folder) / "config.json"
        try:
            c = json.loads(path.read_text())
            return cls(c["vocab_size"], c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"],
                       c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"]),
                       bool(c.get("tie_word_embeddings", False)))
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"{path}: cannot read the model's shape for the memory estimate ({exc!r})") from None

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection of one layer."""
        kv = self.hidden // self.heads * self.kv_heads
        h, i = self.hidden, self.intermediate
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def params(self) -> int:
        layer = sum(a * b for a, b in self.linear_shapes().values())
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.layers * layer


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU of each part, the activations both with and without checkpointing."""

    weights: float
    optimizer: float
    activations_checkpointed: float
    activations_full: float
    logits: float
    vllm: float
    card: float
    checkpointing: bool

    @property
    def activations(self) -> float:
        """The activations as configured."""
        return self.activations_checkpointed if self.checkpointing else self.activations_full

    @property
    def activations_other(self) -> float:
        """The activations with checkpointing flipped."""
        return self.activations_full if self.checkpointing else self.activations_checkpointed

    @property
    def total(self) -> float:
        return self.weights + self.optimizer + self.activations + self.logits + self.vllm

    def fits(self) -> bool:
        return self.total <= self.card

    def lines(self) -> list[str]:
        g = lambda x: f"{x / GIB:.1f} GiB"  # noqa: E731
        verdict = "fits" if self.fits() else "WILL NOT FIT: lower train.micro_batch_tokens (or micro_batch_size) or max_new_tokens, " \
            "turn train.gradient_checkpointing on, or lower train.vllm_memory_share"
        return [
            f"training memory per GPU (estimate, {g(self.card)} card): weights {g(self.weights)}, optimizer "
            f"{g(self.optimizer)}, activations {g(self.activations)} (checkpointing "
            f"{'on' if self.checkpointing else 'off'}; on {g(self.activations_checkpointed)}, off "
            f"{g(self.activations_full)}), logits {g(self.logits)}, "
            f"vLLM share {g(self.vllm)}",
            f"total {g(self.total)} of {g(self.card)}: {verdict}",
        ]


def estimate(shape: Shape, train, dtype_bytes: int, card_bytes: float, vllm: bool) -> MemoryEstimate:
    """The estimate for a :class:`training.config.TrainConfig` ``train`` on a card of ``card_bytes``."""
    micro = train.micro_batch(train.completions_per_update // train.processes)
    tokens = micro * train.sequence_cap
    h, i = shape.hidden, shape.intermediate
    per_token_layer = (15 + 19 * i / (4 * h)) * h * dtype_bytes / 2  # Korthikanti's 34 h, MLP scaled
    full = tokens * shape.layers * per_token_layer
    checkpointed = tokens * (shape.layers * h * dtype_bytes + per_token_layer)
    if train.lora.full_finetune:
        trained = shape.params
    else:
        targets = set(train.lora.target_modules)
        trained = shape.layers * sum(train.lora.r * (a + b) for name, (a, b) in shape.linear_shapes().items()
                                     if name in targets)
    # the loss reads the completion positions' logits: 16-bit logits, a float32 log-softmax and its gradient
    logits = micro * train.max_new_tokens * shape.vocab * (dtype_bytes + 4 + 4)
    return MemoryEstimate(
        weights=shape.params * dtype_bytes,
        optimizer=16 * trained,
        activations_checkpointed=checkpointed,
        activations_full=full,
        logits=logits,
        vllm=train.vllm_memory_share * card_bytes if vllm else 0.0,
        card=card_bytes,
        checkpointing=train.gradient_checkpointing in ("auto", True),  # auto: on, on the GPU this estimate is for
    )
