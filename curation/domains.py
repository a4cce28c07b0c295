"""The embedded problem set: procedural reasoning-gym domains with worked solutions, generated offline.

Four domains that exercise different skills (signed running sums, counting with
world knowledge, Euclid's algorithm, string reversal), about 17,000 problems in
all. reasoning-gym generates the problems; each carries a worked solution in
polymath's trace format (curation/traces.py), one valid order drawn per problem.
Generation is seeded, so every machine builds the same set; the test split is
generated from a different seed and filtered so no test prompt appears in train.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any

from polymath.errors import DataError

from polymath.records import Problem
from .traces import TRACERS, trace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DomainSpec:
    """One reasoning-gym task with the difficulty parameters the demo uses."""

    domain: str
    task: str
    params: dict[str, Any] = field(default_factory=dict)


EMBEDDED_DOMAINS: tuple[DomainSpec, ...] = (
    DomainSpec("arithmetic", "chain_sum", dict(min_terms=3, max_terms=4, min_digits=1, max_digits=1)),
    DomainSpec("legs", "leg_counting", dict(min_animals=2, max_animals=2, max_instances=4)),
    DomainSpec("gcd", "gcd", dict(min_numbers=2, max_numbers=2, min_value=2, max_value=99)),
    DomainSpec("reverse", "spell_backward", dict(min_word_len=9, max_word_len=12)),
)

TRAIN_SEED = 20_251_105
TEST_SEED = 20_250_217


def domain_spec(domain: str, specs: tuple[DomainSpec, ...] = EMBEDDED_DOMAINS) -> DomainSpec:
    for spec in specs:
        if spec.domain == domain:
            return spec
    names = ", ".join(s.domain for s in specs)
    raise DataError(f"unknown domain {domain!r} in data.domains; the source's domains are: {names}")


def _generate_unique(spec: DomainSpec, n: int, seed: int, exclude: set[str]) -> list[Problem]:
    """Draw reasoning-gym entries until ``n`` distinct prompts not in ``exclude`` are found."""
    import reasoning_gym

    out: list[Problem] = []
    seen = set(exclude)
    size = max(3 * n, 1000)
    for attempt in range(4):
        # reasoning-gym seeds entry i with (seed + i): space the attempts' seeds so they do not overlap.
        attempt_seed = seed + attempt * 1_000_003
        try:
            ds = reasoning_gym.create_dataset(spec.task, size=size, seed=attempt_seed, **spec.params)
        except Exception as exc:  # reasoning-gym raises ValueError, TypeError or AssertionError on bad parameters
            raise DataError(
                f"reasoning-gym task {spec.task!r} (domain {spec.domain!r}) rejects its parameters {spec.params}: "
                f"{type(exc).__name__}: {exc}; fix the task's params in data.tasks"
            ) from None
        for i in range(size):
            entry = ds[i]
            question = entry["question"]
            if question in seen:
                continue
            seen.add(question)
            metadata = dict(entry.get("metadata", {}))
            metadata["reasoning_gym_task"] = spec.task
            pid = f"{spec.domain}-{attempt_seed}-{i}"
            answer = str(entry["answer"])
            # One valid order per problem, seeded by its id: the set holds every fork of the format.
            # Tasks without a trace format have no worked solution (only the tiny model's warm start needs one).
            solution = trace(spec.task, metadata, answer, random.Random(pid)) if spec.task in TRACERS else None
            out.append(
                Problem(id=pid, domain=spec.domain, prompt=question, answer=answer, solution=solution, metadata=metadata)
            )
            if len(out) == n:
                return out
    raise DataError(
        f"reasoning-gym task {spec.task!r} yields fewer than {n} distinct prompts with {spec.params}; "
        "lower data.train_per_domain / data.test_per_domain or widen the task's difficulty parameters"
    )


def load_embedded(
    domains: list[str] | None = None,
    train_per_domain: int = 4000,
    test_per_domain: int = 250,
    specs: tuple[DomainSpec, ...] = EMBEDDED_DOMAINS,
) -> tuple[list[Problem], list[Problem]]:
    """Return (train, test) problems for reasoning-gym domains: ``specs`` (the embedded four by default),
    or those of them ``domains`` names."""
    specs = tuple(domain_spec(d, specs) for d in domains) if domains else specs
    train: list[Problem] = []
    test: list[Problem] = []
    for spec in specs:
        domain_train = _generate_unique(spec, train_per_domain, TRAIN_SEED, exclude=set())
        seen = {p.prompt for p in domain_train}
        domain_test = _generate_unique(spec, test_per_domain, TEST_SEED, exclude=seen)
        train.extend(domain_train)
        test.extend(domain_test)
    return train, test
