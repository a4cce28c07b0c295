"""One generated completion with the statistics of the tokens that made it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    """A completion as a backend returns it.

    ``mean_entropy`` is the mean over generated tokens of the entropy (nats) of
    the distribution the token was drawn from; ``sum_logprob`` the sum of the
    drawn tokens' log-probabilities under it. ``token_ids`` are the generated
    tokens up to and including EOS (no padding); the statistics cover the same.
    ``hit_cap`` is true when generation stopped at the token cap, not at EOS.
    """

    text: str
    token_ids: tuple[int, ...]
    mean_entropy: float
    sum_logprob: float
    hit_cap: bool = False

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)
