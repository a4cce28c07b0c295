"""Per-step controllers of the objective: the entropy coefficient and the PAR lambda.

Both are plain Python state machines driven by one number per optimizer step,
the token-mean entropy H of the step's batch, so they are testable without a
trainer and their state is a small JSON document saved beside each checkpoint.

Timing convention: the values read during step t were set at the end of step
t - 1; ``Controllers.end_step(H_t)`` then prepares step t + 1.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from polymath.errors import TrainingError
from training.config import EntropySettings, ParSettings
from training.entropy_modes import ENTROPY_MODES, EntropyMode

STATE_FILE = "polymath_controllers.json"
STATE_VERSION = 2


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


class EntropyController:
    """Entropy-bonus coefficient: none, fixed, adaptive (Skywork-OR1) or AER."""

    def __init__(self, settings: EntropySettings):
        self.settings = settings
        self.coef = float(settings.coef)
        # A moving mode's target: the configured one, or none until the initial entropy is observed.
        given = self._mode.moves and not self._mode.learns_target(settings) and settings.target is not None
        self.target: float | None = float(settings.target) if given else None
        self.initial_entropy: float | None = None

    @property
    def mode(self) -> str:
        return self.settings.mode

    @property
    def _mode(self) -> EntropyMode:
        return ENTROPY_MODES[self.settings.mode]

    @property
    def enabled(self) -> bool:
        return self._mode.enabled

    def applied_coef(self, batch_entropy: float) -> float:
        """Coefficient to apply to a batch whose (detached) token-mean entropy is ``batch_entropy``.

        adaptive applies its bonus only while H < target (Skywork-OR1); AER's
        coefficient is driven toward zero above target by ``update`` instead.
        """
        return self._mode.applied_coef(self.coef, self.target, batch_entropy)

    def sequence_weights(self, group_accuracy: torch.Tensor) -> torch.Tensor:
        """Per-sequence multipliers of the coefficient (difficulty scaling for AER, ones otherwise)."""
        return self._mode.sequence_weights(group_accuracy, self.settings)

    def observe_initial(self, entropy: float) -> None:
        """Record the entropy of the untrained policy on the training prompts (once)."""
        if self.initial_entropy is not None:
            return
        self.initial_entropy = float(entropy)
        if self._mode.learns_target(self.settings):
            self.target = self.settings.target_fraction * self.initial_entropy

    def update(self, entropy: float) -> None:
        """End of an optimizer step: c <- clip(c + delta * sign(target - H), c_min, c_max)."""
        if not self._mode.moves or self.target is None or math.isnan(entropy):
            return
        s = self.settings
        self.coef = min(max(self.coef + s.delta * _sign(self.target - entropy), s.c_min), s.c_max)

    def state_dict(self) -> dict[str, Any]:
        return {"coef": self.coef, "target": self.target, "initial_entropy": self.initial_entropy}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.coef = float(state["coef"])
        self.target = None if state["target"] is None else float(state["target"])
        self.initial_entropy = None if state["initial_entropy"] is None else float(state["initial_entropy"])


class ParController:
    """Positive-advantage reweighting lambda: constant, staged or entropy-guided."""

    def __init__(self, settings: ParSettings, total_steps: int):
        if total_steps < 1:
            raise TrainingError(f"PAR schedule needs total_steps >= 1, got {total_steps}; set train.steps >= 1")
        self.settings = settings
        self.total_steps = total_steps
        self.value = self.staged_value(1) if settings.schedule == "staged" else float(settings.lambda0)
        # entropy-guided: the entropy below which lambda falls; a relative one waits for the initial entropy
        self.threshold: float | None = None if settings.delta_fraction is not None else float(settings.delta)

    def observe_initial(self, entropy: float) -> None:
        """Record the untrained policy's entropy: a relative threshold becomes ``delta_fraction`` of it (once)."""
        if self.threshold is None and self.settings.delta_fraction is not None:
            self.threshold = self.settings.delta_fraction * float(entropy)

    def staged_value(self, step: int) -> float:
        """Lambda for 1-based step ``step``: 0 through staged_fraction x T, then linear to 1 at step T."""
        start = self.settings.staged_fraction * self.total_steps
        if step <= start:
            return 0.0
        return min(1.0, (step - start) / (self.total_steps - start))

    def update(self, finished_step: int, entropy: float) -> None:
        """End of 1-based step ``finished_step`` with measured entropy H: set lambda for the next step."""
        s = self.settings
        if s.schedule == "staged":
            self.value = self.staged_value(finished_step + 1)
        elif s.schedule == "entropy-guided" and not math.isnan(entropy) and self.threshold is not None:
            moved = self.value - s.step if entropy < self.threshold else self.value + s.step
            self.value = min(1.0, max(0.0, moved))

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "threshold": self.threshold}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])
        self.threshold = None if state["threshold"] is None else float(state["threshold"])


class Controllers:
    """The entropy and PAR controllers of one run, advanced once per optimizer step."""

    def __init__(self, entropy: EntropySettings, par: ParSettings, total_steps: int):
        self.entropy = EntropyController(entropy)
        self.par = ParController(par, total_steps)
        self.steps_done = 0

    @property
    def initial_entropy(self) -> float | None:
        return self.entropy.initial_entropy

    @property
    def need_initial(self) -> bool:
        """Whether a controller reads the untrained policy's entropy (measured before training when asked)."""
        return self.entropy.enabled or self.par.settings.delta_fraction is not None

    def observe_initial(self, entropy: float) -> None:
        """The untrained policy's entropy, for every controller that is relative to it (first call only)."""
        self.entropy.observe_initial(entropy)
        self.par.observe_initial(entropy)

    def end_step(self, entropy: float) -> None:
        """Close an optimizer step whose batch had token-mean entropy ``entropy``.

        The first step's batch is sampled from the untrained policy, so its
        entropy is the initial entropy AER anchors its target to.
        """
        self.observe_initial(entropy)
        self.steps_done += 1
        self.entropy.update(entropy)
        self.par.update(self.steps_done, entropy)

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "steps_done": self.steps_done,
            "entropy": self.entropy.state_dict(),
            "par": self.par.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise TrainingError(
                f"controller state version {state.get('version')!r} is not {STATE_VERSION}; "
                "the checkpoint was written by another polymath version: retrain or delete the checkpoints"
            )
        self.steps_done = int(state["steps_done"])
        self.entropy.load_state_dict(state["entropy"])
        self.par.load_state_dict(state["par"])

    def save(self, folder: Path) -> Path:
        """Write the state atomically (a checkpoint is complete once this file exists: it is written last)."""
        from polymath.workspace import write_atomic

        path = Path(folder) / STATE_FILE
        write_atomic(path, json.dumps(self.state_dict(), indent=1))
        return path

    def load(self, folder: Path) -> None:
        path = Path(folder) / STATE_FILE
        if not path.exists():
            raise TrainingError(
                f"{path} is missing: the checkpoint was saved without polymath's controller state; "
                "resume from a checkpoint written by train_expert, or delete the checkpoints to start over"
            )
        try:
            state = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise TrainingError(
                f"{path} is not valid JSON ({exc}); delete the checkpoint folder to start over"
            ) from None
        self.load_state_dict(state)
