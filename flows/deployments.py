"""Flows for Prefect deployments: parameters are a profile name and safe overrides, not a config object.

A deployment stores its parameters as JSON and anyone who can reach the server can set them, so these entry
points accept only what ``pipeline.deploy_params`` allows (a profile of the worker, overrides of numbers,
switches and named choices, a workspace under the deploy root) and refuse the rest before anything runs.
Every run holds its workspace's concurrency slot (a Prefect global concurrency limit of 1 named after the
workspace), so the nightly pipeline and the hourly evaluation never write one workspace at once: the later
run waits for the earlier one.

``prefect.yaml`` names these flows by module path (``flows.deployments.run_profile``): Prefect then imports
them as a package module rather than running this file as a script with ``flows/`` on the import path.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger

from pipeline.deploy_params import deployment_config, resolve_workspace

from pipeline.execution import execution_policy
from pipeline.graph import Runs

from .stage_flows import select_flow


def workspace_limit_name(root: Path) -> str:
    """The global concurrency limit that serialises the runs on one workspace."""
    return "polymath-workspace-" + hashlib.sha256(str(root).encode()).hexdigest()[:16]


@contextmanager
def one_writer(root: Path):
    """Hold ``root``'s concurrency slot (limit 1, created on first use) for the duration of a run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists

    name = workspace_limit_name(root)
    with get_client(sync_client=True) as client:
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        except ObjectAlreadyExists:
            pass  # another run made it first: the same limit
    get_run_logger().info("workspace %s: waiting for its slot (%s)", root, name)
    with concurrency(name, occupy=1, strict=True):
        yield


def _summary(runs: Runs) -> dict:
    """The run keys of each step, for the flow run's result."""
    out: dict = {}
    for f in fields(runs):
        if f.name != "done":
            value = getattr(runs, f.name)
            out[f.name] = [r.key for r in value] if isinstance(value, tuple) else getattr(value, "key", None)
    return out


@flow(name="polymath")
def run_profile(
    config: str = "demo",
    overrides: list[str] | None = None,
    workspace: str | None = None,
    stage: Literal["curate", "train", "evaluate", "merge"] | None = None,
    force: bool = False,
) -> dict:
    """Run the pipeline (or one stage) of a profile: what a scheduled deployment calls."""
    cfg = deployment_config(config, overrides)
    root = resolve_workspace(workspace)
    root.mkdir(parents=True, exist_ok=True)
    execution = execution_policy(cfg)
    flow_fn, force_set = select_flow(stage, force, execution)
    with one_writer(root):
        return _summary(flow_fn(cfg, str(root), force_set, execution))


@flow(name="polymath-experiment-entropy")
def run_entropy_experiment(
    config: str = "demo",
    overrides: list[str] | None = None,
    workspace: str | None = None,
    seeds: list[int] | None = None,
    arms: list[str] | None = None,
    domain: str | None = None,
    k: int | None = None,
    ood_domain: str | None = None,
    steps: int | None = None,
) -> str:
    """``polymath experiment entropy`` for a deployment; returns the report's path."""
    from experiments.entropy import experiment_from_options

    from .experiment import entropy_experiment_flow

    cfg = deployment_config(config, overrides)
    experiment = experiment_from_options(seeds, arms, domain, k, ood_domain, steps)
    root = resolve_workspace(workspace)
    root.mkdir(parents=True, exist_ok=True)
    with one_writer(root):
        return entropy_experiment_flow(cfg, str(root), experiment)
