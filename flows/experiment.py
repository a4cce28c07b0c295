"""``polymath experiment entropy`` as a Prefect flow: every arm a train and an evaluate task."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from evaluation.store import Store
from flows.runners import with_workers
from experiments.entropy import (
    EntropyExperiment,
    StageCalls,
    arm_stages,
    experiment_plan,
    longest_first,
    run_arms_in_turn,
    run_experiment,
)
from experiments.entropy_report import write_entropy_report
from pipeline.config import PolymathConfig
from tasks.stage_tasks import ingest_task, run_stage
from polymath.workspace import Workspace

@task(name="arm", cache_policy=NO_CACHE, task_run_name="{label}")
def arm_task(calls: StageCalls, cfg, ws, model, data, curate, domain, label):
    """One arm run: its train and evaluate tasks (each in a worker process with ``workers > 1``)."""
    return arm_stages(calls, cfg, ws, model, data, curate, domain, label)


def _arms_side_by_side(calls: StageCalls, jobs: list[tuple]) -> list:
    futures = {i: arm_task.submit(calls, *jobs[i]) for i in longest_first(jobs)}
    return [futures[i].result() for i in range(len(jobs))]


def entropy_experiment_flow(cfg: PolymathConfig, workspace: str, experiment: EntropyExperiment) -> str:
    """Run every arm (reusing finished ones), ``cfg.workers`` at a time, then write the report; returns its path."""
    return with_workers(_entropy_experiment, cfg.workers)(cfg, workspace, experiment)


@flow(name="experiment-entropy")
def _entropy_experiment(cfg: PolymathConfig, workspace: str, experiment: EntropyExperiment) -> str:
    start = time.perf_counter()
    ws = Workspace(workspace)
    plan = experiment_plan(cfg, experiment)
    calls = StageCalls(run=run_stage, ingest=ingest_task,
                       arms=_arms_side_by_side if cfg.workers > 1 else run_arms_in_turn)
    run_experiment(plan, ws, calls)
    path = write_entropy_report(Store(ws.db_path), ws.reports_dir / "entropy")
    create_markdown_artifact(Path(path).read_text(), key="entropy-experiment")
    get_run_logger().info("entropy experiment: %.1f min; report: %s", (time.perf_counter() - start) / 60, path)
    return str(path)
