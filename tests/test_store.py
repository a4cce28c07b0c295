"""The results store: replace semantics, read-only queries, locking, errors."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from evaluation import schema
from evaluation.store import Store
from evaluation.synthetic import synthetic_samples
from polymath.errors import StoreError


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "polymath.duckdb", busy_timeout=0.5, retry_interval=0.05)
    s.ensure_schema()
    return s


def counts(store: Store) -> dict[str, int]:
    return dict(zip(*store.tables()[["name", "rows"]].T.values))


def ingest_samples(store: Store, df: pd.DataFrame) -> None:
    for (run, model), part in df.groupby(["eval_run", "model_label"]):
        store.replace("eval_samples", part, {"eval_run": run, "model_label": model})


def steps(run_key: str, expert: str, metrics: dict[str, list[float]]) -> pd.DataFrame:
    rows = [
        (run_key, expert, step, metric, value)
        for metric, values in metrics.items()
        for step, value in enumerate(values)
    ]
    return pd.DataFrame(rows, columns=schema.TABLES["train_steps"].column_names)


def test_ensure_schema_creates_every_table_and_view_and_is_idempotent(store: Store):
    store.ensure_schema()
    store.ensure_schema()
    listing = store.tables()
    assert set(listing.loc[listing.kind == "table", "name"]) == set(schema.TABLES)
    assert set(listing.loc[listing.kind == "view", "name"]) == set(schema.VIEW_DESCRIPTIONS)
    assert (listing["rows"] == 0).all()
    assert listing["description"].str.len().gt(0).all()


def test_reingest_gives_the_same_row_counts(store: Store):
    df = synthetic_samples(6, 4, models=("base", "expert:math"), benchmarks=("a", "b"), ragged=True)
    ingest_samples(store, df)
    first = counts(store)
    ingest_samples(store, df)
    assert counts(store) == first
    assert first["eval_samples"] == len(df)
    assert first["eval_problems"] == 2 * 2 * 6


def test_replace_touches_only_the_rows_matching_where(store: Store):
    df = synthetic_samples(3, 2, models=("base", "expert:math"))
    ingest_samples(store, df)
    smaller = df[(df.model_label == "base") & (df.problem_id == "p0000000")]
    store.replace("eval_samples", smaller, {"eval_run": "synthetic", "model_label": "base"})
    per_model = store.query("SELECT model_label, count(*) AS n FROM eval_samples GROUP BY 1 ORDER BY 1")
    assert per_model.to_dict("list") == {"model_label": ["base", "expert:math"], "n": [2, 6]}
    derived = store.query("SELECT model_label, count(*) AS n FROM eval_problems GROUP BY 1 ORDER BY 1")
    assert derived["n"].tolist() == [1, 3]


def test_a_failing_insert_leaves_the_old_rows(store: Store):
    df = synthetic_samples(3, 2)
    ingest_samples(store, df)
    before = store.query("SELECT * FROM eval_samples ORDER BY problem_id, sample_idx")
    before_summary = store.query("SELECT * FROM eval_summary ORDER BY k")
    broken = df.copy()
    broken["sample_idx"] = broken["sample_idx"].astype(str)
    broken.loc[3, "sample_idx"] = "not a number"  # DuckDB fails the cast mid-statement, after the DELETE
    with pytest.raises(StoreError, match="nothing was changed"):
        store.replace("eval_samples", broken, {"eval_run": "synthetic", "model_label": "base"})
    pd.testing.assert_frame_equal(store.query("SELECT * FROM eval_samples ORDER BY problem_id, sample_idx"), before)
    pd.testing.assert_frame_equal(store.query("SELECT * FROM eval_summary ORDER BY k"), before_summary)


def test_a_null_key_is_refused_and_rolled_back(store: Store):
    df = synthetic_samples(2, 2)
    ingest_samples(store, df)
    broken = df.copy()
    broken.loc[1, "problem_id"] = None
    with pytest.raises(StoreError, match="problem_id"):
        store.replace("eval_samples", broken, {"eval_run": "synthetic", "model_label": "base"})
    assert counts(store)["eval_samples"] == len(df)


def test_columns_are_validated_by_name(store: Store):
    df = synthetic_samples(1, 2)
    with pytest.raises(StoreError, match=r"missing column\(s\) \['n_tokens'\]"):
        store.replace("eval_samples", df.drop(columns=["n_tokens"]), {"eval_run": "synthetic"})
    with pytest.raises(StoreError, match=r"unknown column\(s\) \['temperature'\]"):
        store.replace("eval_samples", df.assign(temperature=1.0), {"eval_run": "synthetic"})
    with pytest.raises(StoreError, match="unknown table 'samples'"):
        store.replace("samples", df, {})
    with pytest.raises(StoreError, match="derived from eval_samples"):
        store.replace("eval_problems", df, {})


def test_where_must_describe_the_rows(store: Store):
    df = synthetic_samples(2, 2)
    with pytest.raises(StoreError, match="eval_run = 'other'"):
        store.replace("eval_samples", df, {"eval_run": "other"})
    with pytest.raises(StoreError, match="does not have"):
        store.replace("eval_samples", df, {"run_key": "x"})
    with pytest.raises(StoreError, match="whole problems"):
        store.replace("eval_samples", df, {"sample_idx": 0})
    bad = df.copy()
    bad.loc[0, "new_bigrams"] = bad.loc[0, "n_bigrams"] + 1
    with pytest.raises(StoreError, match="bigram_novelty"):
        store.replace("eval_samples", bad, {"eval_run": "synthetic"})
    assert counts(store)["eval_samples"] == 0


def test_every_table_accepts_its_rows(store: Store):
    now = pd.Timestamp("2025-01-01 13:00", tz="Europe/Paris")
    frames = {
        "runs": pd.DataFrame([("train", "k1", "math expert", '{"lr": 1e-5}', "finished", now,
                               now + pd.Timedelta(seconds=90), 90.0, "workspace/artifacts/train/k1", "{}")]),
        "curation_selection": pd.DataFrame([("c1", "p1", "arith", 3, 0), ("c1", "p2", "logic", 1, 1)]),
        "curation_metrics": pd.DataFrame([("c1", "random", 0, "vendi_score", 12.5)]),
        "merge_runs": pd.DataFrame([("m1", "robustmerge", "merged:robustmerge", '{"keep": 0.2}', 2.0, 16, 2, 1.5, 0.3, 0.8,
                                     "{}")]),
        "train_steps": steps("t1", "math", {"reward": [0.1, 0.2]}),
    }
    for table, df in frames.items():
        df.columns = schema.TABLES[table].column_names
        key = df.columns[1] if table == "runs" else "run_key"
        store.replace(table, df, {key: df[key].iloc[0]})
        store.replace(table, df, {key: df[key].iloc[0]})
        assert counts(store)[table] == len(df)
    started = store.query("SELECT started_at, seconds FROM runs")
    assert started["started_at"].iloc[0] == pd.Timestamp("2025-01-01 12:00")


def test_train_curves_pivots_every_metric_present(store: Store):
    empty = store.query("SELECT * FROM train_curves")
    assert list(empty.columns) == ["run_key", "expert", "step", "reward", "accuracy", "entropy"]
    store.replace("train_steps", steps("t1", "math", {"reward": [0.1, 0.3], "entropy": [1.2, 0.9],
                                                      "lambda": [1.0, 0.5]}), {"run_key": "t1"})
    curves = store.query("SELECT * FROM train_curves")
    assert list(curves.columns) == ["run_key", "expert", "step", "reward", "accuracy", "entropy", "lambda"]
    assert curves["reward"].tolist() == [0.1, 0.3]
    assert curves["lambda"].tolist() == [1.0, 0.5]
    assert curves["accuracy"].isna().all()


def test_query_is_read_only(store: Store):
    ingest_samples(store, synthetic_samples(2, 2))
    digest = hashlib.sha256(store.path.read_bytes()).hexdigest()
    for statement in ("DELETE FROM eval_samples", "CREATE TABLE x (a INT)", "DROP VIEW eval_summary",
                      "INSERT INTO runs (stage, run_key) VALUES ('a', 'b')"):
        with pytest.raises(StoreError, match="read-only"):
            store.query(statement)
    assert hashlib.sha256(store.path.read_bytes()).hexdigest() == digest
    assert counts(store)["eval_samples"] == 4


def test_query_takes_parameters(store: Store):
    ingest_samples(store, synthetic_samples(3, 2))
    got = store.query("SELECT count(*) AS n FROM eval_samples WHERE problem_id = ?", ["p0000001"])
    assert got["n"].iloc[0] == 2


def test_bad_sql_names_duckdbs_message(store: Store):
    with pytest.raises(StoreError, match=r"(?s)query failed: .*syntax error.*SQL: SELEC 1"):
        store.query("SELEC 1")
    with pytest.raises(StoreError, match="no_such_table"):
        store.query("SELECT * FROM no_such_table")


def test_missing_database_says_run_first(tmp_path: Path):
    store = Store(tmp_path / "workspace" / "polymath.duckdb")
    with pytest.raises(StoreError, match="run `polymath run` first"):
        store.query("SELECT 1")
    with pytest.raises(StoreError, match="run `polymath run` first"):
        store.tables()
    assert not store.path.exists()


def test_an_open_writer_in_this_process_reads_as_busy(store: Store):
    con = duckdb.connect(str(store.path))
    try:
        start = time.monotonic()
        with pytest.raises(StoreError, match="database busy, retry"):
            store.query("SELECT 1")
        assert time.monotonic() - start >= store.busy_timeout
    finally:
        con.close()
    assert store.query("SELECT 1 AS one")["one"].iloc[0] == 1


HOLD_LOCK = textwrap.dedent(
    """
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1])
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    con.close()
    """
)


def _hold_lock(path: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_writer_in_another_process_makes_calls_fail_busy(store: Store):
    proc = _hold_lock(store.path, 30)
    try:
        with pytest.raises(StoreError, match="database busy, retry"):
            store.query("SELECT 1")
        with pytest.raises(StoreError, match="database busy, retry"):
            store.replace("eval_samples", synthetic_samples(1, 1), {"eval_run": "synthetic"})
    finally:
        proc.terminate()
        proc.wait()


def test_calls_wait_for_a_short_lock(store: Store):
    proc = _hold_lock(store.path, 0.5)
    try:
        patient = Store(store.path, busy_timeout=20, retry_interval=0.05)
        assert patient.query("SELECT 42 AS x")["x"].iloc[0] == 42
    finally:
        proc.wait()
