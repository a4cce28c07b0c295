"""Worked solutions for the embedded domains: a short chain of steps, then the final answer.

A trace is what the tiny demo model learns to write (warm start) and what the
evaluation's token cap is sized from. Every trace ends with the fixed marker
``ANSWER_MARKER`` and the answer; the verifier reads only what follows the marker.

Formats (one function per reasoning-gym task, registered in ``TRACERS``):

- chain_sum      ``12 + 7 - 25`` -> ``12+7=19, 19-25=-6. Answer: -6`` (running sums, left to right), or
                 the signed terms right to left: ``-25+7=-18, -18+12=-6. Answer: -6``
- gcd            ``84, 60`` -> ``84%60=24, 60%24=12, 24%12=0. Answer: 12`` (Euclid's remainders); when the
                 first number is the smaller one, the trace may swap them first or take the step
                 ``34%79=34`` that swaps them
- leg_counting   ``3 cows, 1 spider`` -> ``cow 3*4=12, spider 1*8=8, 12+8=20. Answer: 20`` (animals in any
                 order, then running sums of the products)
- spell_backward ``planet`` -> ``t e n a l p. Answer: tenalp`` (letters from last to first)

Where the task allows more than one valid order, ``trace(problem, rng)`` draws one: the chain then
has forks that do not decide correctness. ``trace(problem)`` without ``rng`` gives the first order.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any

from polymath.answers import ANSWER_MARKER

Tracer = Callable[[dict[str, Any], str, "random.Random | None"], str]


def _finish(steps: list[str], answer: str) -> str:
    return f"{', '.join(steps)}. {ANSWER_MARKER} {answer}"


def _signed_terms(expression: str) -> list[int]:
    """``'12 - 7 + 25'`` -> ``[12, -7, 25]``."""
    tokens = expression.replace(" ", "")
    terms = re.findall(r"[+-]?\d+", tokens)
    if not terms or "".join(terms).lstrip("+") != tokens.lstrip("+"):
        raise ValueError(f"not a chain of + and - terms: {expression!r}")
    return [int(t) for t in terms]


def _chain_sum(meta: dict[str, Any], answer: str, rng: random.Random | None) -> str:
    terms = _signed_terms(meta["expression"])
    if rng is not None and rng.random() < 0.5:
        terms = terms[::-1]
    steps, total = [], terms[0]
    for term in terms[1:]:
        new = total + term
        steps.append(f"{total}{'+' if term >= 0 else '-'}{abs(term)}={new}")
        total = new
    if str(total) != answer:
        raise ValueError(f"chain_sum trace gives {total}, reference answer is {answer!r}")
    return _finish(steps, str(total))


def _gcd(meta: dict[str, Any], answer: str, rng: random.Random | None) -> str:
    a, b = (int(x) for x in meta["numbers"])
    if a < b and (rng is None or rng.random() < 0.5):
        a, b = b, a
    steps = []
    while b:
        steps.append(f"{a}%{b}={a % b}")
        a, b = b, a % b
    if str(a) != answer:
        raise ValueError(f"gcd trace gives {a}, reference answer is {answer!r}")
    return _finish(steps, str(a))


def _leg_counting(meta: dict[str, Any], answer: str, rng: random.Random | None) -> str:
    from reasoning_gym.arithmetic.leg_counting import ANIMALS

    animals = list(meta["animals"].items())
    if rng is not None:
        rng.shuffle(animals)
    steps, products = [], []
    for name, count in animals:
        legs = ANIMALS[name]
        steps.append(f"{name} {count}*{legs}={count * legs}")
        products.append(count * legs)
    total = products[0]
    for p in products[1:]:
        steps.append(f"{total}+{p}={total + p}")
        total += p
    if str(total) != answer:
        raise ValueError(f"leg_counting trace gives {total}, reference answer is {answer!r}")
    return _finish(steps, str(total))


def _spell_backward(meta: dict[str, Any], answer: str, rng: random.Random | None) -> str:
    word = meta["word"]
    if word[::-1] != answer:
        raise ValueError(f"spell_backward: {word!r} reversed is not the reference answer {answer!r}")
    return f"{' '.join(reversed(word))}. {ANSWER_MARKER} {answer}"


TRACERS: dict[str, Tracer] = {
    "chain_sum": _chain_sum,
    "gcd": _gcd,
    "leg_counting": _leg_counting,
    "spell_backward": _spell_backward,
}


def trace(task: str, metadata: dict[str, Any], answer: str, rng: random.Random | None = None) -> str:
    """The worked solution of one reasoning-gym entry (``task`` names its generator)."""
    try:
        tracer = TRACERS[task]
    except KeyError:
        raise ValueError(f"no trace format for reasoning-gym task {task!r}; traced tasks: {', '.join(TRACERS)}") from None
    return tracer(metadata, answer, rng)
