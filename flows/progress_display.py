"""What `polymath run` shows while it works: a progress bar per stage, and the check that nothing is left to do."""

from __future__ import annotations

import logging
from contextlib import contextmanager

from polymath.workspace import Workspace


@contextmanager
def stage_progress(planned, err_console):
    """One progress bar per stage (runs finished of the plan's, with the rate) on a terminal; else nothing
    (Prefect's log lines already name every finished run)."""
    if not planned or not err_console.is_terminal:
        yield
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tasks import progress as stage_events

    totals: dict[str, int] = {}
    for r in planned:
        totals[r.stage] = totals.get(r.stage, 0) + 1
    bars = Progress(TextColumn("{task.description:>9}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=err_console)
    ids = {name: bars.add_task(name, total=n, rate="") for name, n in totals.items()}

    def advance(ref) -> None:
        if ref.stage in ids:
            task = bars.tasks[ids[ref.stage]]
            minutes = max(task.elapsed or 0.0, 1e-9) / 60
            bars.update(ids[ref.stage], advance=1, rate=f"{(task.completed + 1) / minutes:.1f} runs/min")

    from polymath.quiet import console_logs_at

    with console_logs_at(logging.WARNING), bars, stage_events.listening(advance):
        yield


def all_in_database(ws: Workspace, planned) -> list | None:
    """The plan's runs as refs when every one is finished and ingested (None: the flow has work to do)."""
    from pipeline.ingest import already_ingested
    from pipeline.stage import StageRef

    if not planned or any(r.state != "finished" for r in planned):
        return None
    refs = [StageRef(r.stage, r.key, ws.stage_dir(r.stage, r.key), r.label, skipped=True) for r in planned]
    from evaluation.store import Store

    ingested = already_ingested(ws, refs)
    if not all((r.stage, r.key) in ingested for r in refs) or Store(ws.db_path).comparisons_stale():
        return None
    return refs
