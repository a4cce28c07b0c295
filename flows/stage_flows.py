"""The pipeline as Prefect flows: data -> curate -> model -> train -> evaluate -> merge.

The pipeline flow runs one subflow per box of the diagram; each walks its steps of the one stage graph
(:mod:`pipeline.graph`) and can also run alone (``polymath run --stage train``): it takes the earlier runs as
``runs`` when the pipeline passes them, and otherwise makes sure they exist first (finished runs are reused
in well under a second). ``force`` is the set of stage names to rerun even when a finished run exists:
``--stage train --force`` forces {"train"} only, a bare ``--force`` every stage, the data and base model
included. ``execution`` (pipeline/execution.py) is decided once per run and says how jobs run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from pipeline.config import PolymathConfig
from pipeline.execution import Execution, execution_policy
from pipeline.graph import STEPS, Job, Runs, merge_sets, walk
from pipeline.stage import StageRef
from polymath.workspace import Workspace
from tasks.stage_tasks import ingest_task, run_job, submit_job

from . import artifacts
from .runners import ray_options, under

ALL_STAGES = ["data", "curate", "model", "train", "evaluate", "merge"]


@flow(name="pipeline")
def pipeline(cfg: PolymathConfig, workspace: str, force: list[str] | None = None,
             execution: Execution | None = None) -> Runs:
    execution = execution or execution_policy(cfg)
    runs = under(curate_flow, execution)(cfg, workspace, force, execution)
    runs = under(train_flow, execution)(cfg, workspace, force, execution, runs=runs)
    runs = under(evaluate_flow, execution)(cfg, workspace, force, execution, runs=runs)
    return under(merge_flow, execution)(cfg, workspace, force, execution, runs=runs)


@flow(name="curate")
def curate_flow(cfg: PolymathConfig, workspace: str, force: list[str] | None = None,
                execution: Execution | None = None) -> Runs:
    return _steps(cfg, workspace, force, execution, Runs(), "curate")


@flow(name="train")
def train_flow(cfg: PolymathConfig, workspace: str, force: list[str] | None = None,
               execution: Execution | None = None, runs: Runs | None = None) -> Runs:
    runs = runs or curate_flow(cfg, workspace, force, execution)
    return _steps(cfg, workspace, force, execution, runs, "train")


@flow(name="evaluate")
def evaluate_flow(cfg: PolymathConfig, workspace: str, force: list[str] | None = None,
                  execution: Execution | None = None, runs: Runs | None = None) -> Runs:
    execution = execution or execution_policy(cfg)
    runs = runs or under(train_flow, execution)(cfg, workspace, force, execution)
    return _steps(cfg, workspace, force, execution, runs, "evaluate")


@flow(name="merge")
def merge_flow(cfg: PolymathConfig, workspace: str, force: list[str] | None = None,
               execution: Execution | None = None, runs: Runs | None = None) -> Runs:
    execution = execution or execution_policy(cfg)
    runs = runs or under(evaluate_flow, execution)(cfg, workspace, force, execution)
    for note in merge_sets(cfg, runs.experts)[1]:
        get_run_logger().warning(note)
    runs = _steps(cfg, workspace, force, execution, runs, STEPS[-1])
    if runs.merges:
        get_run_logger().info("merged %d ways: %s", len(runs.merges), ", ".join(m.label for m in runs.merges))
        artifacts.accuracy(list(runs.evals), key="merge-comparison")
    return runs


def _steps(cfg: PolymathConfig, workspace: str, force: list[str] | None, execution: Execution | None, runs: Runs,
           until: str) -> Runs:
    """The graph's steps not yet in ``runs``, through ``until``: each step's jobs run, then ingested."""
    ws = Workspace(workspace)
    execution = execution or execution_policy(cfg)

    def execute(step: str, jobs: list[Job]) -> list[StageRef]:
        refs = list(_run_all(step, jobs, ws, execution))
        if refs:
            ingest_task(ws, refs)
            AFTER_STEP.get(step, lambda c, r: None)(cfg, refs)
        return refs

    return walk(cfg, execute, runs, until, force or [])


def _run_all(step: str, jobs: list[Job], ws: Workspace, execution: Execution) -> Iterator[StageRef]:
    """Each job's run, in order: submitted all at once to the flow's task runner when the policy runs heavy jobs
    side by side, else one by one. A training step's progress shows as an artifact."""
    progress = create_progress_artifact(0.0, description=f"experts trained of {len(jobs)}") if step == "train" else None
    if not (execution.concurrent and jobs and jobs[0].heavy):
        refs: Iterator[StageRef] = (run_job(job, ws, execution) for job in jobs)
    else:
        with ray_options(num_gpus=execution.gpus_for(jobs[0].stage)):
            futures = [submit_job(job, ws, execution) for job in jobs]
        refs = (future.result() for future in futures)
    for i, ref in enumerate(refs, 1):
        if progress is not None:
            update_progress_artifact(progress, 100.0 * i / len(jobs))
        yield ref


AFTER_STEP: dict[str, Callable[[PolymathConfig, list[StageRef]], None]] = {
    "curate": lambda cfg, refs: artifacts.curation(refs[0], cfg.curate.strategy),
    "train": lambda cfg, refs: artifacts.training_curves(refs),
    "evaluate": lambda cfg, refs: artifacts.accuracy(refs, key="evaluation-accuracy"),
    "evaluate-merges": lambda cfg, refs: artifacts.accuracy(refs, key="evaluation-accuracy"),
}
"""The Prefect artifacts a step leaves in the UI."""


STAGE_FLOWS = {
    "curate": curate_flow,
    "train": train_flow,
    "evaluate": evaluate_flow,
    "merge": merge_flow,
}


def select_flow(stage: str | None, force: bool, execution: Execution):
    """The flow for ``--stage`` (None: the pipeline), under the run's task runner, and the stages ``--force``
    reruns: a forced single stage reruns only itself; a bare ``--force`` reruns every stage."""
    force_set = ([stage] if stage else list(ALL_STAGES)) if force else []
    return under(STAGE_FLOWS[stage] if stage else pipeline, execution), force_set
