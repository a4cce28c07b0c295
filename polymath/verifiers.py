"""Verifiable rewards: one registry of answer checkers.

A problem names its checker in ``metadata["verifier"]`` (set by the data
loader from ``data.verifier``).

- ``marker``: the embedded domains' default. The final answer is the rest of the line after the
  last ``Answer:`` marker, compared exactly (whitespace-normalized) with the reference; a
  completion without the marker, or with nothing after it, is malformed and scores 0. Only the
  answer is read, never the steps before it. No partial credit;
- ``reasoning-gym``: the task's own scorer on the extracted answer, partial credit where the task
  gives it (chain_sum, gcd and leg_counting give 0.5 when the reference is a substring of the
  answer): an explicit option, never a default;
- ``math``: math-verify (parses LaTeX/expressions, checks equivalence);
- ``numeric``: GSM8K style, the last number in the answer compared as a number;
- ``exact``: whitespace- and case-normalized string match.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Protocol

from polymath.records import Problem
from polymath.answers import extract_answer, final_answer, to_number
from polymath.errors import ConfigError
from polymath.registry import Registry

class Verifier(Protocol):
    name: str

    def fits(self, data_format: str, answer_format: str) -> str | None:
        """None when the verifier can check answers of this source; else why not."""
        ...

    def extract(self, completion: str) -> str | None: ...

    def score(self, problem: Problem, completion: str) -> float: ...


class ExactVerifier:
    name = "exact"

    def fits(self, data_format: str, answer_format: str) -> str | None:
        return None

    def extract(self, completion: str) -> str | None:
        return extract_answer(completion)

    def normalize(self, answer: str) -> str:
        """What two answers must share to match: white space folded, case ignored."""
        return " ".join(answer.split()).lower()

    def score(self, problem: Problem, completion: str) -> float:
        """The reward of ``completion``: 0 without an answer the verifier can read (an empty one included: it
        never matches, whatever the reference), else ``grade``'s."""
        answer = self.extract(completion)
        return 0.0 if answer is None or not answer.strip() else self.grade(problem, answer)

    def grade(self, problem: Problem, answer: str) -> float:
        return float(self.normalize(answer) == self.normalize(problem.answer))


class MarkerVerifier(ExactVerifier):
    """Exact match of the final answer after the ``Answer:`` marker; no marker, no credit."""

    name = "marker"

    def extract(self, completion: str) -> str | None:
        return final_answer(completion)

    def normalize(self, answer: str) -> str:
        """White space folded; case counts (a reversed word's letters are the answer)."""
        return " ".join(answer.split())


class NumericVerifier(ExactVerifier):
    """GSM8K-style: compare the last number of the extracted answer."""

    name = "numeric"

    def fits(self, data_format: str, answer_format: str) -> str | None:
        if answer_format == "boxed":
            return "boxed answers are LaTeX expressions (fractions, radicals), not numbers: use math"
        return None

    def grade(self, problem: Problem, answer: str) -> float:
        got, want = to_number(answer), to_number(problem.answer)
        if got is None or want is None:
            return 0.0
        return float(abs(got - want) <= 1e-6 * max(1.0, abs(want)))


class MathVerifier(ExactVerifier):
    """math-verify equivalence of the extracted answer and the reference."""

    name = "math"

    def grade(self, problem: Problem, answer: str) -> float:
        from math_verify import parse, verify

        gold = parse(f"${problem.answer}$") or parse(problem.answer)
        pred = parse(f"${answer}$") or parse(answer)
        if not gold or not pred:
            return 0.0
        try:
            return float(verify(gold, pred))
        except Exception:  # math-verify raises on expressions it cannot compare
            return 0.0


class ReasoningGymVerifier(ExactVerifier):
    """reasoning-gym's own scorer for the task recorded in the problem's metadata."""

    name = "reasoning-gym"

    def fits(self, data_format: str, answer_format: str) -> str | None:
        if data_format != "reasoning-gym":
            return "it scores with the task's entry metadata, which only reasoning-gym data has: use math, numeric or exact"
        return None

    def grade(self, problem: Problem, answer: str) -> float:
        task = problem.metadata.get("reasoning_gym_task") or problem.metadata.get("source_dataset")
        if not task:
            raise ConfigError(
                f"problem {problem.id!r} uses the reasoning-gym verifier but its metadata has no "
                "'reasoning_gym_task'; set data.verifier to math, numeric or exact for external data"
            )
        entry = {"question": problem.prompt, "answer": problem.answer, "metadata": problem.metadata}
        # Some task scorers return 1.0000000000000002; rewards are promised in [0, 1].
        return min(1.0, max(0.0, float(_scorer(task)(answer, entry))))


@lru_cache(maxsize=None)
def _scorer(task: str) -> Callable:
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(task)


VERIFIERS: Registry[Verifier] = Registry("data.verifier")
for _verifier in (MarkerVerifier(), ExactVerifier(), NumericVerifier(), MathVerifier(), ReasoningGymVerifier()):
    VERIFIERS.add(_verifier.name, _verifier)


def get_verifier(name: str) -> Verifier:
    return VERIFIERS[name]


def verifier_for(problem: Problem) -> Verifier:
    name = problem.metadata.get("verifier")
    if name is None:
        name = "reasoning-gym" if "reasoning_gym_task" in problem.metadata else "exact"
    return get_verifier(name)


def score(problem: Problem, completion: str) -> tuple[str | None, float]:
    """(extracted answer, reward in [0, 1]) for one completion."""
    verifier = verifier_for(problem)
    return verifier.extract(completion), verifier.score(problem, completion)


def reward(problem: Problem, completion: str) -> float:
    return score(problem, completion)[1]
