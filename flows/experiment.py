"""``polymath experiment entropy`` as a Prefect flow: every arm a train and an evaluate task."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from evaluation.store import Store
from functools import partial

from flows.runners import under
from experiments.entropy import (
    ArmJob,
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
from pipeline.execution import Execution, execution_policy
from tasks.stage_tasks import ingest_task, run_job
from polymath.workspace import Workspace


@task(name="arm", cache_policy=NO_CACHE, task_run_name="{job.train.label}")
def arm_task(calls: StageCalls, ws: Workspace, job: ArmJob):
    """One arm run: its train and evaluate tasks (each in a worker process with ``workers > 1``)."""
    return arm_stages(calls, ws, job)


def _arms_side_by_side(calls: StageCalls, ws: Workspace, jobs: list[ArmJob]) -> list:
    futures = {i: arm_task.submit(calls, ws, jobs[i]) for i in longest_first(jobs)}
    return [futures[i].result() for i in range(len(jobs))]


def entropy_experiment_flow(cfg: PolymathConfig, workspace: str, experiment: EntropyExperiment) -> str:
    """Run every arm (reusing finished ones), ``cfg.workers`` at a time, then write the report; returns its path."""
    execution = execution_policy(cfg)
    return under(_entropy_experiment, execution)(cfg, workspace, experiment, execution)


@flow(name="experiment-entropy")
def _entropy_experiment(cfg: PolymathConfig, workspace: str, experiment: EntropyExperiment,
                        execution: Execution) -> str:
    start = time.perf_counter()
    ws = Workspace(workspace)
    plan = experiment_plan(cfg, experiment)
    calls = StageCalls(run=partial(run_job, execution=execution), ingest=ingest_task,
                       arms=_arms_side_by_side if execution.concurrent else run_arms_in_turn)
    run_experiment(plan, ws, calls)
    path = write_entropy_report(Store(ws.db_path), ws.reports_dir / "entropy")
    create_markdown_artifact(Path(path).read_text(), key="entropy-experiment")
    get_run_logger().info("entropy experiment: %.1f min; report: %s", (time.perf_counter() - start) / 60, path)
    return str(path)
