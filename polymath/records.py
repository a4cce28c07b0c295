"""The problem record every stage passes around."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One verifiable prompt.

    ``answer`` is the reference answer as a string (already extracted from
    GSM8K ``#### 42`` or ``\\boxed{}`` forms); ``solution`` is a worked solution
    ending in that answer when the source has one (the embedded domains' traces,
    GSM8K's reasoning), used by the warm start and to size evaluation's token cap;
    ``metadata`` carries what the domain's verifier needs beyond the answer
    (reasoning-gym's entry metadata).
    """

    id: str
    domain: str
    prompt: str
    answer: str
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    solution: str | None = None
