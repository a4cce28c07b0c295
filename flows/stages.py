"""One Prefect flow per stage; each reads like its box in the pipeline diagram.

A stage flow takes its upstream runs as ``up`` (the pipeline passes them on);
called alone, it makes sure they exist first (finished runs are reused in well
under a second). ``force`` is the set of stage names to rerun even when a
finished run exists: ``polymath run --stage train --force`` forces {"train"}
only, a bare ``--force`` every stage, the data and base model included.
"""

from __future__ import annotations

from collections.abc import Iterator

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact

from polymath.config import PolymathConfig
from polymath.workspace import Workspace
from tasks.prefect_tasks import (
    curate_task,
    data_task,
    evaluate_task,
    ingest_task,
    merge_task,
    model_task,
    train_task,
)
from tasks.stages import GREEDY_LABEL, StageRef, expert_domains, require_domains

from .runners import ray_options, with_workers


def _fan_out(task, calls: list[tuple], concurrent: bool, num_gpus: float = 0.0) -> Iterator[StageRef]:
    """``task(*args)`` for each of ``calls``, results in order: submitted all at once to the flow's task runner
    when ``concurrent`` (``workers`` local threads feeding the worker processes, or Ray), else one by one."""
    if not concurrent:
        for args in calls:
            yield task(*args)
        return
    with ray_options(num_gpus=num_gpus):
        futures = [task.submit(*args) for args in calls]
    for future in futures:
        yield future.result()


@flow(name="curate")
def curate_flow(cfg: PolymathConfig, workspace: str, force: list[str] | None = None) -> dict:
    force = force or []
    ws = Workspace(workspace)
    data = data_task(cfg, ws, "data" in force)
    curate = curate_task(cfg, ws, data, "curate" in force) if cfg.curate.enabled else None
    ingest_task(ws, [r for r in (data, curate) if r])
    return {"data": data, "curate": curate}


@flow(name="train")
def train_flow(
    cfg: PolymathConfig, workspace: str, force: list[str] | None = None, parallel: bool = False, up: dict | None = None
) -> dict:
    force = force or []
    ws = Workspace(workspace)
    up = up or curate_flow(cfg, workspace, force)
    data, curate = up["data"], up["curate"]
    model = model_task(cfg, ws, data, "model" in force)
    ingest_task(ws, [model])
    domains = expert_domains(cfg, data)
    progress = create_progress_artifact(0.0, description=f"experts trained of {len(domains)}")
    experts: list[StageRef] = []
    calls = [(cfg, ws, model, data, curate, d, "train" in force) for d in domains]
    gpus = 1.0 if cfg.train.use_vllm or cfg.train.bf16 else 0.0
    for i, ref in enumerate(_fan_out(train_task, calls, parallel or cfg.workers > 1, gpus), 1):
        experts.append(ref)
        update_progress_artifact(progress, 100.0 * i / len(domains))
    ingest_task(ws, experts)
    _curves_artifact(experts)
    return {**up, "model": model, "experts": experts}


def _curves_artifact(experts: list[StageRef]) -> None:
    rows = []
    for ref in experts:
        s = ref.manifest()["summary"]
        rows.append(
            {
                "expert": s["expert"],
                "initial_entropy": round(s["initial_entropy"], 4),
                "last_half_entropy": round(s["last_half_entropy"] or 0.0, 4),
                "first_reward": round(s["first_reward"] or 0.0, 4),
                "last_half_reward": round(s["last_half_reward"] or 0.0, 4),
                "curves_png": str(ref.dir / "curves.png"),
            }
        )
    create_table_artifact(rows, key="training-curves", description="Entropy and reward per expert")


@flow(name="evaluate")
def evaluate_flow(
    cfg: PolymathConfig, workspace: str, force: list[str] | None = None, parallel: bool = False, up: dict | None = None
) -> dict:
    force = force or []
    ws = Workspace(workspace)
    up = up or with_workers(train_flow, cfg.workers)(cfg, workspace, force, parallel)
    targets: list[StageRef | None] = ([None] if cfg.evaluate.include_base else []) + list(up["experts"])
    evals = _evaluate_all(cfg, ws, up, targets, "evaluate" in force, parallel, greedy_base=cfg.evaluate.greedy_base)
    return {**up, "evals": evals}


def _evaluate_all(cfg, ws, up, targets, force, parallel, greedy_base: bool = False) -> list[StageRef]:
    jobs = [(t, t.label if t else "base", False) for t in targets]
    if greedy_base:
        jobs.insert(1 if targets and targets[0] is None else 0, (None, GREEDY_LABEL, True))
    calls = [(cfg, ws, up["model"], up["data"], t, label, force, greedy) for t, label, greedy in jobs]
    gpus = 1.0 if cfg.evaluate.backend == "vllm" else 0.0
    evals = list(_fan_out(evaluate_task, calls, parallel or cfg.workers > 1, gpus))
    ingest_task(ws, evals)
    _accuracy_artifact(evals, key="evaluation-accuracy")
    return evals


def _accuracy_artifact(evals: list[StageRef], key: str) -> None:
    rows = []
    for ref in evals:
        acc = ref.manifest()["summary"]["accuracy"]
        rows.append({"model": ref.label, **acc, "mean": round(sum(acc.values()) / max(1, len(acc)), 4)})
    create_table_artifact(rows, key=key, description="avg@k accuracy per domain")


@flow(name="merge")
def merge_flow(
    cfg: PolymathConfig, workspace: str, force: list[str] | None = None, parallel: bool = False, up: dict | None = None
) -> dict:
    force = force or []
    ws = Workspace(workspace)
    up = up or with_workers(evaluate_flow, cfg.workers)(cfg, workspace, force, parallel)
    if len(up["experts"]) < 2:
        get_run_logger().warning("merge skipped: %d expert(s); merging needs at least two domains", len(up["experts"]))
        return {**up, "merges": []}
    experts = up["experts"]
    domains = [e.manifest()["summary"]["expert"] for e in experts]
    require_domains(cfg.merge.leave_out, up["data"], "merge.leave_out")
    sets: list[tuple[str | None, list[StageRef]]] = [(None, experts)]
    for left_out in cfg.merge.leave_out:
        members = [e for e, d in zip(experts, domains) if d != left_out]
        if len(members) < 2:
            get_run_logger().warning("leave-one-out without %s skipped: one expert is left to merge", left_out)
        else:
            sets.append((left_out, members))
    calls = [
        (cfg, ws, up["model"], up["data"], up["curate"], members, m, "merge" in force, left_out, seed)
        for left_out, members in sets
        for m in cfg.merge.methods
        for seed in cfg.merge.seeds_of(m)
    ]
    gpus = 1.0 if cfg.merge.scales and cfg.evaluate.backend == "vllm" else 0.0
    merges = list(_fan_out(merge_task, calls, parallel or cfg.workers > 1, gpus))
    ingest_task(ws, merges)
    # A merged adapter is evaluated whenever its merge reran, so its scores never go stale.
    merge_evals = _evaluate_all(cfg, ws, up, merges, "evaluate" in force or "merge" in force, parallel)
    get_run_logger().info("merged %d ways: %s", len(merges), ", ".join(m.label for m in merges))
    _accuracy_artifact(up["evals"] + merge_evals, key="merge-comparison")
    return {**up, "merges": merges, "evals": up["evals"] + merge_evals}
