"""Checks that need the data, run before any Prefect server or stage starts: a bad input costs one message.

The CLI's ``polymath run`` and the deployments call :func:`preflight` after the config validates. It reads a
file-based source (a malformed line is reported now, not minutes later inside the data stage) and refuses the
combinations that cannot run, above all the tiny model on data it cannot be warm-started on.
"""

from __future__ import annotations

from polymath.errors import ConfigError

from .config import PolymathConfig


def preflight(cfg: PolymathConfig) -> None:
    from .execution import execution_policy

    execution_policy(cfg)  # parallel GPU runs need a device each
    sources = cfg.data.resolved_sources()
    embedded = all(src.format == "reasoning-gym" and not src.tasks for src in sources)
    if embedded:
        return  # the embedded domains: generated, with worked solutions, sized for the tiny model
    if all(src.format == "reasoning-gym" for src in sources) and cfg.model.source != "tiny":
        return  # reasoning-gym tasks are generated in the data stage; only the tiny model needs more
    from curation.data import load_problems

    problems = load_problems(cfg.data)
    if cfg.model.source == "tiny":
        _tiny_can_learn(problems.train, cfg)


def _tiny_can_learn(problems, cfg: PolymathConfig) -> None:
    """The tiny model learns by a warm start on worked solutions that fit its context: refuse data without."""
    from polymath.prompting import PLAIN_SUFFIX

    fix = ("use model.source: smollm (or path) for this data; the tiny model is warm-started on worked solutions "
           "and suits the embedded domains")
    missing = [p for p in problems if not p.solution]
    if missing:
        raise ConfigError(f"model.source tiny: {len(missing)} of {len(problems)} training problems have no worked "
                          f"solution (first: {missing[0].id!r}); {fix}")
    limit = cfg.model.tiny.max_positions
    # the character tokenizer: one position per character, plus the end-of-sequence token
    fits = [p for p in problems if len(p.prompt) + len(PLAIN_SUFFIX) + len(p.solution) + 1 <= limit]
    if len(fits) < len(problems) / 2:
        longest = max(problems, key=lambda p: len(p.prompt) + len(p.solution))
        raise ConfigError(
            f"model.source tiny: {len(problems) - len(fits)} of {len(problems)} training problems do not fit its "
            f"{limit} positions (longest: {longest.id!r}, {len(longest.prompt) + len(longest.solution)} characters); "
            f"{fix}, or raise model.tiny.max_positions"
        )
