"""The pipeline's stages, one module each (data, curate, model, train, evaluate, merge), without an orchestrator.

Each stage module declares its name and code with ``@stage`` and has a plain ``run(cfg, ws, *, inputs...)``;
:mod:`pipeline.graph` expands the jobs of a run once, :mod:`tasks.stage_tasks` wraps them all in one Prefect
task, and :mod:`pipeline.plan` walks them without running anything. From a notebook::

    from pipeline import data, curate
    data_run = data.run(cfg, ws)
    curate_run = curate.run(cfg, ws, data=data_run)
"""

from __future__ import annotations


def stages():
    """The registry of every stage (importing the stage modules registers them)."""
    from . import curate, data, evaluate, merge, model, train  # noqa: F401
    from .stage import STAGES

    return STAGES
