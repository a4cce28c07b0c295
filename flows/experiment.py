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
    run_arms_in_turn,
    run_experiment,
)
from experiments.entropy_report import write_entropy_report
from polymath.config import PolymathConfig
from polymath.workspace import Workspace
from tasks.prefect_tasks import curate_task, data_task, evaluate_task, ingest_task, model_task, train_task
from tasks.stages import GREEDY_LABEL


def _evaluate(cfg, ws, model, data, target, force=False, greedy=False):
    label = target.label if target else (GREEDY_LABEL if greedy else "base")
    return evaluate_task(cfg, ws, model, data, target, label, force, greedy)


@task(name="arm", cache_policy=NO_CACHE, task_run_name="{label}")
def arm_task(calls: StageCalls, cfg, ws, model, data, curate, domain, label):
    """One arm run: its train and evaluate tasks (each in a worker process with ``workers > 1``)."""
    return arm_stages(calls, cfg, ws, model, data, curate, domain, label)


def _arms_side_by_side(calls: StageCalls, jobs: list[tuple]) -> list:
    futures = [arm_task.submit(calls, *job) for job in jobs]
    return [f.result() for f in futures]


def entropy_experiment_flow(cfg: PolymathConfig, workspace: str, experiment: EntropyExperiment) -> str:
    """Run every arm (reusing finished ones), ``cfg.workers`` at a time, then write the report; returns its path."""
    return with_workers(_entropy_experiment, cfg.workers)(cfg, workspace, experiment)


@flow(name="experiment-entropy")
def _entropy_experiment(cfg: PolymathConfig, workspace: str, experiment: EntropyExperiment) -> str:
    start = time.perf_counter()
    ws = Workspace(workspace)
    plan = experiment_plan(cfg, experiment)
    calls = StageCalls(
        data=data_task, model=model_task, curate=curate_task, train=train_task, evaluate=_evaluate, ingest=ingest_task,
        arms=_arms_side_by_side if cfg.workers > 1 else run_arms_in_turn,
    )
    run_experiment(plan, ws, calls)
    path = write_entropy_report(Store(ws.db_path), ws.reports_dir / "entropy")
    create_markdown_artifact(Path(path).read_text(), key="entropy-experiment")
    get_run_logger().info("entropy experiment: %.1f min; report: %s", (time.perf_counter() - start) / 60, path)
    return str(path)
