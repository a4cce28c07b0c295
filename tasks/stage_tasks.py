"""One Prefect task for every stage: logging, isolation of the heavy stages, the DuckDB ingest with retries.

Caching is the workspace's (content-addressed stage folders), so Prefect's own result cache is off. A
stage is not retried: its failures (bad config, bad data) are deterministic. Only the ingest retries,
since the one failure it can meet that goes away by itself is another process holding the write lock.

    ref = run_stage("train", "expert:gcd", cfg, ws, model, data, curate, "gcd")       # in a flow
    future = submit_stage("evaluate", "base", cfg, ws, model, data, None)
"""

from __future__ import annotations

from functools import lru_cache

from prefect import Task, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.runtime import task_run

from pipeline import stages
from pipeline.devices import cuda_devices, device_slots, plan_devices
from pipeline.ingest import ingest_all
from pipeline.stage import StageRef, reused, run_guarded
from polymath.workspace import Workspace

from . import isolation, progress


def _run_name() -> str:
    params = task_run.parameters
    return f"{params['name']}-{params['label']}"


def _call(fn, *args, workers: int):
    """A finished run is found here, in the flow's process; only a run that has to execute goes to a worker
    process (which would import torch just to find it), on devices of its own when several run side by side."""
    if (done := reused(fn, *args)) is not None:
        return done
    visible = cuda_devices()
    slots = device_slots(plan_devices(args[0], visible), visible)
    return isolation.call(fn, *args, workers=workers, device_slots=slots)


def _stage(name: str, label: str, args: tuple) -> StageRef:
    spec = stages()[name]
    if spec.heavy:  # trainings, evaluations, merges: a process of their own where the config asks for one
        done = run_guarded(name, label, _call, spec.run, *args, workers=args[0].workers)
    else:
        done = run_guarded(name, label, spec.run, *args)
    get_run_logger().info("%s %s %s: %s", done.stage, done.label, "reused" if done.skipped else "finished", done.dir)
    progress.announce(done)
    return done


@lru_cache(maxsize=None)
def stage_task(name: str) -> Task:
    """The Prefect task of stage ``name`` (one function behind all of them, named after the stage)."""
    return task(_stage, name=name, cache_policy=NO_CACHE, task_run_name=_run_name)


def run_stage(name: str, label: str, *args) -> StageRef:
    """Run (or reuse) stage ``name``'s run for ``args`` (its ``run()`` arguments) as a Prefect task."""
    stages()[name]  # an unknown stage fails here, before Prefect
    return stage_task(name)(name, label, args)


def submit_stage(name: str, label: str, *args) -> PrefectFuture:
    """``run_stage`` submitted to the flow's task runner."""
    return stage_task(name).submit(name, label, args)


@task(name="ingest", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=2)
def ingest_task(ws: Workspace, refs: list[StageRef]) -> dict[str, int]:
    """One writer: every finished run's rows go into DuckDB from this task, run by run."""
    totals = ingest_all(ws, refs)
    get_run_logger().info("ingested %s", totals or "runs only")
    return totals
