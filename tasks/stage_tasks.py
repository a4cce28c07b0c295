"""One Prefect task for every stage job: logging, isolation of the heavy stages, the DuckDB ingest with retries.

Caching is the workspace's (content-addressed stage folders), so Prefect's own result cache is off. A
stage is not retried: its failures (bad config, bad data) are deterministic. Only the ingest retries,
since the one failure it can meet that goes away by itself is another process holding the write lock.

    ref = run_job(graph.data_job(cfg), ws, execution)          # in a flow
    future = submit_job(graph.evaluate_job(cfg, runs), ws, execution)
"""

from __future__ import annotations

from functools import lru_cache

from prefect import Task, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.runtime import task_run

from pipeline.execution import Execution
from pipeline.graph import Job
from pipeline.ingest import ingest_all
from pipeline.stage import StageRef, planned, run_guarded
from polymath.workspace import Workspace

from . import isolation, progress


def _run_name() -> str:
    job = task_run.parameters["job"]
    return f"{job.stage}-{job.label}"


def _in_worker(job: Job, ws: Workspace, execution: Execution) -> StageRef:
    """A finished run is found here, in the flow's process; only a run that has to execute goes to a worker
    process (which would import torch just to find it), on devices of its own when several run side by side."""
    if (done := planned(lambda: job.run(ws))).skipped:
        return done
    return isolation.call(job.run, ws, execution=execution)


def _stage(job: Job, ws: Workspace, execution: Execution) -> StageRef:
    if job.heavy:  # trainings, evaluations, merges: a process of their own where the policy asks for one
        done = run_guarded(job.stage, job.label, _in_worker, job, ws, execution)
    else:
        done = run_guarded(job.stage, job.label, job.run, ws)
    get_run_logger().info("%s %s %s: %s", done.stage, done.label, "reused" if done.skipped else "finished", done.dir)
    progress.announce(done)
    return done


@lru_cache(maxsize=None)
def stage_task(name: str) -> Task:
    """The Prefect task of stage ``name`` (one function behind all of them, named after the stage)."""
    return task(_stage, name=name, cache_policy=NO_CACHE, task_run_name=_run_name)


def run_job(job: Job, ws: Workspace, execution: Execution) -> StageRef:
    """Run (or reuse) ``job``'s stage run as a Prefect task."""
    return stage_task(job.stage)(job, ws, execution)


def submit_job(job: Job, ws: Workspace, execution: Execution) -> PrefectFuture:
    """``run_job`` submitted to the flow's task runner."""
    return stage_task(job.stage).submit(job, ws, execution)


@task(name="ingest", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=2)
def ingest_task(ws: Workspace, refs: list[StageRef]) -> dict[str, int]:
    """One writer: every finished run's rows go into DuckDB from this task, run by run."""
    totals = ingest_all(ws, refs)
    get_run_logger().info("ingested %s", totals or "runs only")
    return totals
