"""The whole pipeline: curate -> train -> evaluate -> merge, as subflows in order."""

from __future__ import annotations

from prefect import flow

from polymath.config import PolymathConfig

from .runners import with_workers
from .stages import curate_flow, evaluate_flow, merge_flow, train_flow

ALL_STAGES = ["data", "curate", "model", "train", "evaluate", "merge"]


@flow(name="pipeline")
def pipeline(cfg: PolymathConfig, workspace: str, force: list[str] | None = None, parallel: bool = False) -> dict:
    up = curate_flow(cfg, workspace, force)
    up = with_workers(train_flow, cfg.workers)(cfg, workspace, force, parallel, up=up)
    up = with_workers(evaluate_flow, cfg.workers)(cfg, workspace, force, parallel, up=up)
    return with_workers(merge_flow, cfg.workers)(cfg, workspace, force, parallel, up=up)


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
