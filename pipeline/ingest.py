"""Loading finished stage runs into DuckDB: one writer, run by run, each run's rows replaced as a whole."""

from __future__ import annotations

import json

import pandas as pd

from polymath.errors import PolymathError
from polymath.workspace import Workspace

from .stage import StageRef

#: The tables a stage run may write as parquet, and the column holding its key.
TABLE_FILES = {
    "curation_selection": "run_key",
    "curation_metrics": "run_key",
    "curation_probe": "run_key",
    "train_steps": "run_key",
    "eval_samples": "eval_run",
    "eval_reference_entropy": "eval_run",
    "merge_runs": "run_key",
    "merge_sweep": "run_key",
}


def ingest(ws: Workspace, ref: StageRef) -> dict[str, int]:
    """Load a finished run's tables into DuckDB, replacing that run's earlier rows."""
    from evaluation.store import Store

    # Store.replace creates the schema when it is missing: no separate schema pass per run.
    store = Store(ws.db_path)
    counts: dict[str, int] = {}
    for table, key_column in TABLE_FILES.items():
        path = ref.dir / f"{table}.parquet"
        if path.exists():
            counts[table] = store.replace(table, pd.read_parquet(path), {key_column: ref.key})
    m = ref.manifest()
    runs_row = pd.DataFrame(
        [
            {
                "stage": ref.stage,
                "run_key": ref.key,
                "label": ref.label,
                "config": json.dumps(m.get("config"), sort_keys=True),
                "status": m.get("status"),
                "started_at": pd.Timestamp(m["started_at"]).tz_convert(None),
                "finished_at": pd.Timestamp(m["finished_at"]).tz_convert(None),
                "seconds": m.get("seconds"),
                "artifact_dir": str(ref.dir),
                "inputs": json.dumps(m.get("inputs"), sort_keys=True),
            }
        ]
    )
    store.replace("runs", runs_row, {"stage": ref.stage, "run_key": ref.key})
    return counts


def already_ingested(ws: Workspace, refs: list[StageRef]) -> set[tuple[str, str]]:
    """(stage, run_key) of the reused runs whose ``runs`` row matches their manifest: their rows are in DuckDB
    (``ingest`` writes the ``runs`` row last, so a run cut off mid-ingest is not among them)."""
    from evaluation.store import Store

    reused = [r for r in refs if r.skipped]
    if not reused or not ws.db_path.exists():
        return set()
    keys = ", ".join(f"'{r.key}'" for r in reused)
    try:
        rows = Store(ws.db_path).query(f"SELECT stage, run_key, finished_at FROM runs WHERE run_key IN ({keys})")
    except PolymathError:  # no runs table yet: ingest everything
        return set()
    recorded = {(r.stage, r.run_key): r.finished_at for r in rows.itertuples(index=False)}
    done = set()
    for ref in reused:
        finished = pd.Timestamp(ref.manifest()["finished_at"]).tz_convert(None)
        if recorded.get((ref.stage, ref.key)) == finished:
            done.add((ref.stage, ref.key))
    return done


def ingest_all(ws: Workspace, refs: list[StageRef]) -> dict[str, int]:
    """Ingest finished runs one by one (a reused run already in DuckDB is skipped), then refresh the derived
    comparisons once when they are older than the newest evaluation (one was ingested now, or an earlier
    refresh failed)."""
    from evaluation.store import Store

    done = already_ingested(ws, refs)
    fresh = [r for r in refs if (r.stage, r.key) not in done]
    totals: dict[str, int] = {}
    for ref in fresh:
        for table, n in ingest(ws, ref).items():
            totals[table] = totals.get(table, 0) + n
    store = Store(ws.db_path)
    if any(ref.stage == "evaluate" for ref in fresh) or store.comparisons_stale():
        totals["eval_comparisons"] = store.refresh_comparisons()
    return totals
