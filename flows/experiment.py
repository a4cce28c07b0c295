"""``polymath experiment entropy`` as a Prefect flow: every arm a train and an evaluate task."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from evaluation.store import Store
from experiments.entropy import EntropyExperiment, StageCalls, experiment_plan, run_experiment
from experiments.entropy_report import write_entropy_report
from polymath.config import PolymathConfig
from polymath.workspace import Workspace
from tasks.prefect_tasks import curate_task, data_task, evaluate_task, ingest_task, model_task, train_task


def _evaluate(cfg, ws, model, data, target, force=False):
    return evaluate_task(cfg, ws, model, data, target, target.label if target else "base", force)


@flow(name="experiment-entropy")
def entropy_experiment_flow(cfg: PolymathConfig, workspace: str, experiment: EntropyExperiment) -> str:
    """Run every arm (reusing finished ones), then write the report; returns its path."""
    start = time.perf_counter()
    ws = Workspace(workspace)
    plan = experiment_plan(cfg, experiment)
    calls = StageCalls(
        data=data_task, model=model_task, curate=curate_task, train=train_task, evaluate=_evaluate, ingest=ingest_task
    )
    run_experiment(plan, ws, calls)
    path = write_entropy_report(Store(ws.db_path), ws.reports_dir / "entropy")
    create_markdown_artifact(Path(path).read_text(), key="entropy-experiment")
    get_run_logger().info("entropy experiment: %.1f min; report: %s", (time.perf_counter() - start) / 60, path)
    return str(path)
