"""What the trainer does to a batch before its loss: the model inputs it forwards, micro-batches cut to their
longest completion, and which vLLM importance ratios TRL capped or masked."""

from __future__ import annotations

import torch

# Inputs forwarded to the model as TRL forwards them (multimodal batches); absent keys are None.
FORWARD_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)


# Per-token tensors of a batch, aligned with its completion columns.
_COMPLETION_KEYS = ("completion_ids", "completion_mask", "advantages", "old_per_token_logps", "ref_per_token_logps",
                    "sampling_per_token_logps", "importance_sampling_ratio", "tool_mask")


def trim_completions(inputs: dict) -> dict:
    """``inputs`` cut to the last completion column any row's loss reads (at least one column).

    TRL pads every completion to the longest of the whole rollout batch; a micro-batch of it (several updates per
    batch) rarely holds that longest one, so its forward and backward would run over columns of padding only. A
    causal model's log-probabilities of the columns kept do not depend on the ones cut, so the loss is the same.
    The trainer calls it for micro-batches only (several per rollout batch); a whole batch is left as TRL made it.
    """
    mask = inputs["completion_mask"]
    used = mask.bool().any(dim=0).nonzero()
    width = int(used.max().item()) + 1 if used.numel() else 1
    if width >= mask.size(1):
        return inputs
    out = dict(inputs)
    for key in _COMPLETION_KEYS:
        value = out.get(key)
        if isinstance(value, torch.Tensor) and value.dim() == 2 and value.size(1) == mask.size(1):
            out[key] = value[:, :width]
    return out


def is_corrected(ratio: torch.Tensor, trainer) -> torch.Tensor:
    """1 where TRL capped (truncate modes) or masked (mask modes) the vLLM importance ratio, else 0."""
    cap, floor = trainer.vllm_importance_sampling_clip_max, trainer.vllm_importance_sampling_clip_min
    hit = ratio == 0 if "mask" in trainer.vllm_importance_sampling_mode else torch.zeros_like(ratio, dtype=torch.bool)
    if cap is not None:
        hit = hit | (ratio >= cap)
    if floor is not None:
        hit = hit | (ratio <= floor)
    return hit.float()
