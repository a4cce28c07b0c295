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

import re
from functools import lru_cache
from typing import Callable, Protocol

from curation.records import Problem
from polymath.errors import ConfigError

_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_HASHES = re.compile(r"####\s*(.+)")
_ANSWER_LINE = re.compile(r"(?:final answer|answer)\s*(?:is)?\s*[:=]\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``, braces balanced."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def extract_answer(completion: str) -> str | None:
    """The answer a completion commits to.

    Looks, in order, for ``<answer>..</answer>``, ``\\boxed{..}``, ``#### ..``,
    an ``Answer: ..`` line, and otherwise takes the first non-empty line (the
    embedded tiny model answers directly after ``Answer: ``).
    """
    if not completion:
        return None
    for pattern in (_TAG,):
        found = pattern.findall(completion)
        if found:
            return found[-1].strip()
    boxed = _last_boxed(completion)
    if boxed is not None:
        return boxed.strip()
    hashes = _HASHES.findall(completion)
    if hashes:
        return hashes[-1].strip().splitlines()[0].strip()
    lines = [ln.strip() for ln in completion.strip().splitlines() if ln.strip()]
    for line in reversed(lines):
        m = _ANSWER_LINE.search(line)
        if m:
            return m.group(1).strip()
    return lines[0] if lines else None


ANSWER_MARKER = "Answer:"


def final_answer(completion: str, marker: str = ANSWER_MARKER) -> str | None:
    """The rest of the line after the last ``marker``, stripped; None when the marker is missing or nothing follows."""
    if not completion or marker not in completion:
        return None
    tail = completion.rsplit(marker, 1)[1]
    lines = tail.splitlines()
    answer = lines[0].strip() if lines else ""
    return answer or None


def _to_number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


class Verifier(Protocol):
    name: str

    def extract(self, completion: str) -> str | None: ...

    def score(self, problem: Problem, completion: str) -> float: ...


class ExactVerifier:
    name = "exact"

    def extract(self, completion: str) -> str | None:
        return extract_answer(completion)

    def score(self, problem: Problem, completion: str) -> float:
        answer = self.extract(completion)
        if answer is None:
            return 0.0
        norm = lambda s: " ".join(s.split()).lower()  # noqa: E731
        return float(norm(answer) == norm(problem.answer))


class MarkerVerifier(ExactVerifier):
    """Exact match of the final answer after the ``Answer:`` marker; no marker, no credit."""

    name = "marker"

    def extract(self, completion: str) -> str | None:
        return final_answer(completion)

    def score(self, problem: Problem, completion: str) -> float:
        answer = self.extract(completion)
        if answer is None:
            return 0.0
        return float(" ".join(answer.split()) == " ".join(problem.answer.split()))


class NumericVerifier(ExactVerifier):
    """GSM8K-style: compare the last number of the extracted answer."""

    name = "numeric"

    def score(self, problem: Problem, completion: str) -> float:
        answer = self.extract(completion)
        if answer is None:
            return 0.0
        got, want = _to_number(answer), _to_number(problem.answer)
        if got is None or want is None:
            return 0.0
        return float(abs(got - want) <= 1e-6 * max(1.0, abs(want)))


class MathVerifier(ExactVerifier):
    """math-verify equivalence of the extracted answer and the reference."""

    name = "math"

    def score(self, problem: Problem, completion: str) -> float:
        from math_verify import parse, verify

        answer = self.extract(completion)
        if answer is None:
            return 0.0
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

    def score(self, problem: Problem, completion: str) -> float:
        answer = self.extract(completion)
        if answer is None:
            return 0.0
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


VERIFIERS: dict[str, Verifier] = {
    v.name: v for v in (MarkerVerifier(), ExactVerifier(), NumericVerifier(), MathVerifier(), ReasoningGymVerifier())
}


def get_verifier(name: str) -> Verifier:
    try:
        return VERIFIERS[name]
    except KeyError:
        raise ConfigError(
            f"unknown verifier {name!r}; choose one of {', '.join(sorted(VERIFIERS))} (data.verifier)"
        ) from None


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
