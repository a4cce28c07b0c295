"""Thin Prefect tasks over :mod:`tasks.stages`: logging, retries for I/O, artifacts.

Caching is the workspace's (content-addressed stage folders), so Prefect's own
result cache is off; only the DuckDB ingest retries, since the one failure it
can meet that goes away by itself is another process holding the write lock.
Deterministic failures (bad config, bad data) are not retried.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run

from polymath.config import PolymathConfig
from polymath.workspace import Workspace

from . import isolation, stages
from .merging import merge_stage, merged_label
from .stages import StageRef, run_guarded


def _call(fn, *args, workers: int):
    """A finished run is found here, in the flow's process; only a run that has to execute goes to a worker
    process (which would import torch just to find it)."""
    if (ref := stages.reused(fn, *args)) is not None:
        return ref
    return isolation.call(fn, *args, workers=workers)


def _log(ref: StageRef) -> StageRef:
    logger = get_run_logger()
    state = "reused" if ref.skipped else "finished"
    logger.info("%s %s %s: %s", ref.stage, ref.label, state, ref.dir)
    return ref


@task(name="data", cache_policy=NO_CACHE)
def data_task(cfg: PolymathConfig, ws: Workspace, force: bool = False) -> StageRef:
    return _log(run_guarded("data", "data", stages.data_stage, cfg, ws, force))


@task(name="curate", cache_policy=NO_CACHE)
def curate_task(cfg: PolymathConfig, ws: Workspace, data: StageRef, force: bool = False) -> StageRef:
    ref = _log(run_guarded("curate", "curate", stages.curate_stage, cfg, ws, data, force))
    summary = ref.manifest()["summary"]
    rows = [
        {"metric": m, cfg.curate.strategy: round(v, 4), "random (mean of seeds)": round(summary["random_mean"].get(m, float("nan")), 4)}
        for m, v in summary["metrics"].items()
        if not m.startswith("domain:")
    ]
    create_table_artifact(rows, key="curation-diversity", description=f"Diversity of {summary['k']} selected prompts vs random subsets")
    create_markdown_artifact(
        f"### Curated subset\n{summary['k']} prompts by `{cfg.curate.strategy}`.\n\n"
        f"2-D projection (selected highlighted): `{ref.dir / 'projection.png'}`",
        key="curation-projection",
    )
    return ref


@task(name="model", cache_policy=NO_CACHE)
def model_task(cfg: PolymathConfig, ws: Workspace, data: StageRef, force: bool = False) -> StageRef:
    return _log(run_guarded("model", "base", stages.model_stage, cfg, ws, data, force))


def _train_run_name() -> str:
    params = task_run.parameters
    return f"train-{params.get('label') or params.get('domain')}"


@task(name="train-expert", cache_policy=NO_CACHE, task_run_name=_train_run_name)
def train_task(
    cfg: PolymathConfig,
    ws: Workspace,
    model: StageRef,
    data: StageRef,
    curate: StageRef | None,
    domain: str,
    force: bool = False,
    label: str | None = None,
) -> StageRef:
    # Several trainings at a time each get a process of their own (torch's thread pool is per process).
    ref = run_guarded(
        "train", stages.expert_label(domain, label), _call, stages.train_stage, cfg, ws, model, data, curate,
        domain, force, label, workers=cfg.workers,
    )
    return _log(ref)


@task(name="evaluate", cache_policy=NO_CACHE, task_run_name="evaluate-{label}")
def evaluate_task(
    cfg: PolymathConfig,
    ws: Workspace,
    model: StageRef,
    data: StageRef,
    target: StageRef | None,
    label: str,
    force: bool = False,
    greedy: bool = False,
) -> StageRef:
    ref = run_guarded(
        "evaluate", label, _call, stages.evaluate_stage, cfg, ws, model, data, target, force, greedy,
        workers=cfg.workers,
    )
    return _log(ref)


def _merge_run_name() -> str:
    params = task_run.parameters
    return merged_label(params["method"], params.get("left_out"), params.get("seed"))


@task(name="merge", cache_policy=NO_CACHE, task_run_name=_merge_run_name)
def merge_task(
    cfg: PolymathConfig,
    ws: Workspace,
    model: StageRef,
    data: StageRef,
    curate: StageRef | None,
    experts: list[StageRef],
    method: str,
    force: bool = False,
    left_out: str | None = None,
    seed: int | None = None,
) -> StageRef:
    label = merged_label(method, left_out, seed)
    return _log(run_guarded("merge", label, _call, merge_stage, cfg, ws, model, data, curate, experts, method,
                            force, left_out, seed, workers=cfg.workers))


@task(name="ingest", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=2)
def ingest_task(ws: Workspace, refs: list[StageRef]) -> dict[str, int]:
    """One writer: every finished run's rows go into DuckDB from this task, run by run."""
    totals = stages.ingest_all(ws, refs)
    get_run_logger().info("ingested %s", totals or "runs only")
    return totals
