"""The modes of the entropy bonus, listed once: what coefficient a batch gets, per-sequence multipliers, and
whether the coefficient moves toward a target and learns that target from the initial entropy.

``train.entropy.mode`` is validated against this registry, and the controller (training/controllers.py)
asks its mode instead of comparing names, so a new mode is one class here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

from polymath.registry import Registry

if TYPE_CHECKING:
    from training.config import EntropySettings


def difficulty_weights(group_accuracy: torch.Tensor, power: float) -> torch.Tensor:
    """Per-sequence weights (1 - accuracy) ** power, rescaled to mean 1 over the batch.

    Harder prompts (lower group accuracy) get larger weights, so the global
    coefficient keeps its meaning as the batch-average coefficient. A batch
    where every prompt is solved has no hard prompt to favour: uniform weights.
    """
    if power == 0:
        return torch.ones_like(group_accuracy, dtype=torch.float32)
    w = (1.0 - group_accuracy.float()).clamp(min=0.0) ** power
    mean = w.mean()
    if not torch.isfinite(mean) or mean <= 0:
        return torch.ones_like(w)
    return w / mean


class EntropyMode:
    """A constant coefficient on every sequence (the ``fixed`` mode); subclasses change one decision each."""

    enabled: ClassVar[bool] = True
    """Whether the bonus can act at all (the trainer measures the initial entropy only for modes that can)."""
    moves: ClassVar[bool] = False
    """Whether the coefficient follows c += delta * sign(target - H) after every optimizer step."""

    def learns_target(self, settings: EntropySettings) -> bool:
        """Whether the target is ``target_fraction`` x the initial entropy (else ``settings.target`` or none)."""
        return False

    def applied_coef(self, coef: float, target: float | None, batch_entropy: float) -> float:
        """The coefficient a batch of token-mean entropy ``batch_entropy`` is trained with."""
        return coef

    def sequence_weights(self, group_accuracy: torch.Tensor, settings: EntropySettings) -> torch.Tensor:
        """Per-sequence multipliers of the coefficient."""
        return torch.ones_like(group_accuracy, dtype=torch.float32)


class NoBonus(EntropyMode):
    enabled = False

    def applied_coef(self, coef: float, target: float | None, batch_entropy: float) -> float:
        return 0.0


class Adaptive(EntropyMode):
    """Skywork-OR1: the coefficient moves toward the target and acts only while H < target."""

    moves = True

    def learns_target(self, settings: EntropySettings) -> bool:
        return settings.target is None

    def applied_coef(self, coef: float, target: float | None, batch_entropy: float) -> float:
        return coef if target is not None and batch_entropy < target else 0.0


class Aer(EntropyMode):
    """AER: target relative to the initial entropy; harder prompts get a larger share of the coefficient."""

    moves = True

    def learns_target(self, settings: EntropySettings) -> bool:
        return True

    def sequence_weights(self, group_accuracy: torch.Tensor, settings: EntropySettings) -> torch.Tensor:
        return difficulty_weights(group_accuracy, settings.difficulty_power)


ENTROPY_MODES: Registry[EntropyMode] = Registry("train.entropy.mode")
ENTROPY_MODES.add("none", NoBonus())
ENTROPY_MODES.add("fixed", EntropyMode())
ENTROPY_MODES.add("adaptive", Adaptive())
ENTROPY_MODES.add("aer", Aer())
