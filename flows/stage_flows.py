"""The pipeline as Prefect flows: data -> curate -> model -> train -> evaluate -> merge.

The pipeline flow runs one subflow per box of the diagram; each subflow can also run alone
(``polymath run --stage train``): it takes its upstream runs as ``up`` when the pipeline passes them, and
otherwise makes sure they exist first (finished runs are reused in well under a second). ``force`` is the
set of stage names to rerun even when a finished run exists: ``--stage train --force`` forces {"train"}
only, a bare ``--force`` every stage, the data and base model included.
"""

from __future__ import annotations

from collections.abc import Iterator

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from pipeline.config import PolymathConfig
from pipeline.curate import needs_model
from pipeline.data import require_domains
from pipeline.devices import plan_devices
from pipeline.evaluate import eval_label, evaluation_jobs
from pipeline.merge import merged_label
from pipeline.stage import StageRef
from tasks.stage_tasks import ingest_task, run_stage, submit_stage
from pipeline.train import expert_domains, expert_label
from polymath.workspace import Workspace

from . import artifacts
from .runners import ray_options, with_workers

ALL_STAGES = ["data", "curate", "model", "train", "evaluate", "merge"]


@flow(name="pipeline")
def pipeline(cfg: PolymathConfig, workspace: str, force: list[str] | None = None, parallel: bool = False) -> dict:
    up = curate_flow(cfg, workspace, force)
    up = with_workers(train_flow, cfg.workers)(cfg, workspace, force, parallel, up=up)
    up = with_workers(evaluate_flow, cfg.workers)(cfg, workspace, force, parallel, up=up)
    return with_workers(merge_flow, cfg.workers)(cfg, workspace, force, parallel, up=up)


@flow(name="curate")
def curate_flow(cfg: PolymathConfig, workspace: str, force: list[str] | None = None) -> dict:
    force = force or []
    ws = Workspace(workspace)
    data = run_stage("data", "data", cfg, ws, "data" in force)
    # the policy encoder and the learnability probe read the base model: it comes first then
    model = run_stage("model", "base", cfg, ws, data, "model" in force) if needs_model(cfg) else None
    curate = run_stage("curate", "curate", cfg, ws, data, "curate" in force, model) if cfg.curate.enabled else None
    ingest_task(ws, [r for r in (data, model, curate) if r])
    if curate is not None:
        artifacts.curation(curate, cfg.curate.strategy)
    return {"data": data, "curate": curate, "model": model}


@flow(name="train")
def train_flow(
    cfg: PolymathConfig, workspace: str, force: list[str] | None = None, parallel: bool = False, up: dict | None = None
) -> dict:
    force = force or []
    ws = Workspace(workspace)
    up = up or curate_flow(cfg, workspace, force)
    data, curate = up["data"], up["curate"]
    model = up.get("model")
    if model is None:
        model = run_stage("model", "base", cfg, ws, data, "model" in force)
        ingest_task(ws, [model])
    domains = expert_domains(cfg, data)
    progress = create_progress_artifact(0.0, description=f"experts trained of {len(domains)}")
    jobs = [(expert_label(d), (cfg, ws, model, data, curate, d, "train" in force)) for d in domains]
    gpus = plan_devices(cfg).gpus_for("train")
    experts: list[StageRef] = []
    for i, ref in enumerate(_fan_out("train", jobs, parallel or cfg.workers > 1, gpus), 1):
        experts.append(ref)
        update_progress_artifact(progress, 100.0 * i / len(domains))
    ingest_task(ws, experts)
    artifacts.training_curves(experts)
    return {**up, "model": model, "experts": experts}


@flow(name="evaluate")
def evaluate_flow(
    cfg: PolymathConfig, workspace: str, force: list[str] | None = None, parallel: bool = False, up: dict | None = None
) -> dict:
    force = force or []
    up = up or with_workers(train_flow, cfg.workers)(cfg, workspace, force, parallel)
    evals = _evaluate_all(cfg, Workspace(workspace), up, evaluation_jobs(cfg, up["experts"]), "evaluate" in force,
                          parallel)
    return {**up, "evals": evals}


@flow(name="merge")
def merge_flow(
    cfg: PolymathConfig, workspace: str, force: list[str] | None = None, parallel: bool = False, up: dict | None = None
) -> dict:
    force = force or []
    ws = Workspace(workspace)
    up = up or with_workers(evaluate_flow, cfg.workers)(cfg, workspace, force, parallel)
    experts = up["experts"]
    if len(experts) < 2:
        get_run_logger().warning("merge skipped: %d expert(s); merging needs at least two domains", len(experts))
        return {**up, "merges": []}
    domains = [e.manifest()["summary"]["expert"] for e in experts]
    require_domains(cfg.merge.leave_out, up["data"], "merge.leave_out")
    sets: list[tuple[str | None, list[StageRef]]] = [(None, experts)]
    for left_out in cfg.merge.leave_out:
        members = [e for e, d in zip(experts, domains) if d != left_out]
        if len(members) < 2:
            get_run_logger().warning("leave-one-out without %s skipped: one expert is left to merge", left_out)
        else:
            sets.append((left_out, members))
    jobs = [
        (merged_label(m, left_out, seed),
         (cfg, ws, up["model"], up["data"], up["curate"], members, m, "merge" in force, left_out, seed))
        for left_out, members in sets
        for m in cfg.merge.methods
        for seed in cfg.merge.seeds_of(m)
    ]
    gpus = plan_devices(cfg).gpus_for("merge") if cfg.merge.scales else 0.0  # only a scale sweep samples
    merges = list(_fan_out("merge", jobs, parallel or cfg.workers > 1, gpus))
    ingest_task(ws, merges)
    # A merged adapter is evaluated whenever its merge reran, so its scores never go stale.
    merge_evals = _evaluate_all(cfg, ws, up, [(m, False) for m in merges], "evaluate" in force or "merge" in force,
                                parallel)
    get_run_logger().info("merged %d ways: %s", len(merges), ", ".join(m.label for m in merges))
    artifacts.accuracy(up["evals"] + merge_evals, key="merge-comparison")
    return {**up, "merges": merges, "evals": up["evals"] + merge_evals}


def _evaluate_all(cfg, ws, up, jobs: list[tuple[StageRef | None, bool]], force, parallel) -> list[StageRef]:
    calls = [(eval_label(t, greedy), (cfg, ws, up["model"], up["data"], t, force, greedy)) for t, greedy in jobs]
    gpus = plan_devices(cfg).gpus_for("evaluate")
    evals = list(_fan_out("evaluate", calls, parallel or cfg.workers > 1, gpus))
    ingest_task(ws, evals)
    artifacts.accuracy(evals, key="evaluation-accuracy")
    return evals


def _fan_out(stage: str, jobs: list[tuple[str, tuple]], concurrent: bool, num_gpus: float = 0.0) -> Iterator[StageRef]:
    """Stage ``stage`` for each (label, args) of ``jobs``, results in order: submitted all at once to the flow's
    task runner when ``concurrent`` (``workers`` local threads feeding the worker processes, or Ray), else one
    by one."""
    if not concurrent:
        for label, args in jobs:
            yield run_stage(stage, label, *args)
        return
    with ray_options(num_gpus=num_gpus):
        futures = [submit_stage(stage, label, *args) for label, args in jobs]
    for future in futures:
        yield future.result()


STAGE_FLOWS = {
    "curate": curate_flow,
    "train": train_flow,
    "evaluate": evaluate_flow,
    "merge": merge_flow,
}


def select_flow(stage: str | None, force: bool, workers: int = 1):
    """The flow for ``--stage`` (None: the pipeline) and the stages ``--force`` reruns; trainings, evaluations
    and merges run ``workers`` at a time.

    A forced single stage reruns only itself; a bare ``--force`` reruns every stage.
    """
    force_set = ([stage] if stage else list(ALL_STAGES)) if force else []
    flow_fn = STAGE_FLOWS[stage] if stage else pipeline
    # The pipeline sets its stage flows' runners itself.
    return (with_workers(flow_fn, workers) if stage else flow_fn), force_set
