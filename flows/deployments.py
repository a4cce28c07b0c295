"""Flows for Prefect deployments: parameters are a profile name and overrides, not a config object.

A deployment stores its parameters as JSON; these entry points load and
validate the profile on the worker, then run the same flows the CLI runs.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow

from pipeline.config import load_config
from polymath.workspace import Workspace

from .pipeline import select_flow


@flow(name="polymath")
def run_profile(
    config: str = "demo",
    overrides: list[str] | None = None,
    workspace: str | None = None,
    stage: Literal["curate", "train", "evaluate", "merge"] | None = None,
    force: bool = False,
) -> dict:
    """Run the pipeline (or one stage) of a profile: what a scheduled deployment calls."""
    cfg = load_config(config, overrides)
    ws = Workspace(workspace)
    ws.root.mkdir(parents=True, exist_ok=True)
    flow_fn, force_set = select_flow(stage, force, cfg.workers)
    result = flow_fn(cfg, str(ws.root.resolve()), force_set)
    return {k: [r.key for r in v] if isinstance(v, list) else getattr(v, "key", v) for k, v in result.items()}


@flow(name="polymath-experiment-entropy")
def run_entropy_experiment(
    config: str = "demo",
    overrides: list[str] | None = None,
    workspace: str | None = None,
    seeds: list[int] | None = None,
    arms: list[str] | None = None,
    domain: str = "gcd",
    k: int = 600,
) -> str:
    """``polymath experiment entropy`` for a deployment; returns the report's path."""
    from experiments.entropy import experiment_from_options

    from .experiment import entropy_experiment_flow

    cfg = load_config(config, overrides)
    experiment = experiment_from_options(seeds, arms, domain, k)
    ws = Workspace(workspace)
    ws.root.mkdir(parents=True, exist_ok=True)
    return entropy_experiment_flow(cfg, str(ws.root.resolve()), experiment)
