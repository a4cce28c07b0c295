"""The results database: the one module of polymath that talks to DuckDB.

DuckDB lets one process write a file at a time, so every call opens a
connection, does its work and closes it; nothing holds the file across a stage.
Writers replace a run's rows in one transaction (rerun = same row counts);
readers open the file read-only, so a user's query cannot change it. While
another process holds the write lock, both retry for ``busy_timeout`` seconds
before giving up with a "database busy, retry" error.

Table and view definitions live in ``evaluation.schema``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from evaluation import schema, views
from polymath.errors import StoreError

_INCOMING = "_polymath_incoming"


def _is_lock_error(err: duckdb.Error) -> bool:
    text = str(err)
    # Another process: an IOException on the file lock. This process: DuckDB
    # refuses a read-only and a read-write connection to one file side by side.
    return "Could not set lock" in text or "different configuration than existing connections" in text


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    try:
        con.execute("ROLLBACK")
    except duckdb.Error:
        pass  # the failure came before BEGIN: nothing to undo


def _utc_naive(df: pd.DataFrame) -> pd.DataFrame:
    """Timestamps are stored as UTC without a zone; DuckDB would otherwise
    convert zoned ones with the session's local time zone."""
    zoned = [c for c in df.columns if isinstance(df[c].dtype, pd.DatetimeTZDtype)]
    if not zoned:
        return df
    df = df.copy()
    for c in zoned:
        df[c] = df[c].dt.tz_convert("UTC").dt.tz_localize(None)
    return df


def _literal_check(value: object) -> None:
    if value is not None and not isinstance(value, (str, int, float, bool)):
        raise StoreError(
            f"replace(where=...) values must be str, int, float, bool or None, got {type(value).__name__} "
            f"({value!r}); pass one scalar per column"
        )


# Read-only connections see the results database and nothing else: no files (read_csv, COPY TO, ATTACH), no
# extensions, and no SET that could undo it. `polymath sql` runs whatever a user types through these.
READ_ONLY = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "lock_configuration": True,
}


class Store:
    """One DuckDB results file (``workspace/polymath.duckdb``).

    ``busy_timeout`` is how long a call waits for another process's write lock
    to go away; ``retry_interval`` is the pause between attempts.
    """

    def __init__(self, path: Path, busy_timeout: float = 5.0, retry_interval: float = 0.1):
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self.retry_interval = retry_interval

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    # -- connections -------------------------------------------------------

    def _connect(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        if read_only and not self.path.exists():
            raise StoreError(
                f"no results database at {self.path}: run `polymath run` first, "
                "or point --workspace / POLYMATH_HOME at the workspace that holds polymath.duckdb"
            )
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                return duckdb.connect(str(self.path), read_only=read_only, config=READ_ONLY if read_only else {})
            except duckdb.Error as err:
                if not _is_lock_error(err):
                    raise StoreError(f"cannot open the results database {self.path}: {err}") from err
                if time.monotonic() >= deadline:
                    raise StoreError(
                        f"database busy, retry: {self.path} is locked by another writer "
                        f"(waited {self.busy_timeout:g} s). Wait for the running stage to finish "
                        f"and retry, or raise the busy timeout. DuckDB said: {err}"
                    ) from err
                time.sleep(self.retry_interval)

    @contextmanager
    def _transaction(self, failure: str) -> Iterator[duckdb.DuckDBPyConnection]:
        """A write connection inside one transaction, committed at the end and closed; on a DuckDB error nothing
        is changed and a StoreError says ``failure`` (what could not be done, and the fix) with DuckDB's words."""
        con = self._connect(read_only=False)
        try:
            con.execute("BEGIN TRANSACTION")
            yield con
            con.execute("COMMIT")
        except duckdb.Error as err:
            _rollback(con)
            raise StoreError(f"{failure}. DuckDB said: {err}") from err
        finally:
            con.close()

    # -- schema ------------------------------------------------------------

    def ensure_schema(self) -> None:
        """Create the tables if missing and (re)create the views; safe to repeat."""
        with self._transaction(f"cannot create the schema in {self.path}") as con:
            self._create_all(con)

    @staticmethod
    def _create_all(con: duckdb.DuckDBPyConnection) -> None:
        for name in schema.TABLES:
            con.execute(schema.create_table_sql(name))
        # A database written by an older polymath lacks the columns added since: add them (NULL in old rows).
        present = set(con.execute("SELECT table_name, column_name FROM duckdb_columns()").fetchall())
        for name, spec in schema.TABLES.items():
            for col in spec.columns:
                if (name, col.name) not in present:
                    con.execute(f"ALTER TABLE {name} ADD COLUMN {schema.quote_ident(col.name)} {col.sql_type}")
        con.execute(views.PASS_AT_K_MACRO_SQL)
        con.execute(views.EVAL_SUMMARY_SQL)
        con.execute(views.ENTROPY_VS_ACCURACY_SQL)
        con.execute(views.EXPERIMENT_RESULTS_SQL)
        con.execute(views.TRAIN_SUMMARY_SQL)
        Store._create_train_curves(con)

    @staticmethod
    def _create_train_curves(con: duckdb.DuckDBPyConnection) -> None:
        metrics = [row[0] for row in con.execute("SELECT DISTINCT metric FROM train_steps").fetchall()]
        con.execute(views.train_curves_sql(metrics))

    # -- writes ------------------------------------------------------------

    def replace(self, table: str, df: pd.DataFrame, where: Mapping[str, object]) -> int:
        """Replace the rows of ``table`` matching ``where`` with ``df``, atomically.

        ``where`` maps columns to values (``{"run_key": key}``); every row of
        ``df`` must carry those values, so that a rerun deletes exactly what
        the previous run inserted. Ingesting ``eval_samples`` also refreshes
        the derived per-problem tables for the same problems, in the same
        transaction. Returns the number of rows inserted.
        """
        spec = self._writable_spec(table)
        self._check_columns(table, spec, df)
        where = dict(where)
        self._check_where(table, spec, df, where)
        if table == "eval_samples":
            self._check_novelty(df)
        clause, params = self._where_clause(where)
        cols = ", ".join(schema.quote_ident(c) for c in spec.column_names)
        # Arrow is DuckDB's zero-copy path; pandas object columns go through it too.
        try:
            incoming = pa.Table.from_pandas(_utc_naive(df[spec.column_names]), preserve_index=False)
        except (pa.ArrowException, ValueError, TypeError) as err:
            raise StoreError(
                f"rows for table {table!r} cannot be converted for DuckDB: {err}; "
                "give each column one type (see evaluation.schema.TABLES)"
            ) from err
        if table == "eval_samples":
            incoming = incoming.append_column("_row", pa.array(np.arange(len(df), dtype=np.int64)))

        failure = (f"could not write {len(df)} rows to table {table!r} in {self.path}; nothing was changed. "
                   f"Check the column types against evaluation.schema.TABLES[{table!r}]")
        with self._transaction(failure) as con:
            con.register(_INCOMING, incoming)
            self._create_all_if_missing(con)
            con.execute(f"DELETE FROM {table} WHERE {clause}", params)
            con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {_INCOMING}")
            if table == "eval_samples":
                for derived in ("eval_problems", "eval_problems_at_k"):
                    con.execute(f"DELETE FROM {derived} WHERE {clause}", params)
                con.execute(views.PROBLEMS_TEMP_SQL.format(incoming=_INCOMING))
                con.execute(views.SAMPLES_TEMP_SQL.format(incoming=_INCOMING))
                con.execute(views.EVAL_PROBLEMS_SQL)
                con.execute(views.EVAL_PROBLEMS_AT_K_SQL)
                con.execute("DROP TABLE _polymath_s")
                con.execute("DROP TABLE _polymath_p")
            elif table == "train_steps":
                self._create_train_curves(con)
        return len(df)

    def _create_all_if_missing(self, con: duckdb.DuckDBPyConnection) -> None:
        present = set(con.execute("SELECT table_name, column_name FROM duckdb_columns()").fetchall())
        wanted = {(name, c.name) for name, spec in schema.TABLES.items() for c in spec.columns}
        views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
        if not wanted <= present or not set(schema.VIEW_DESCRIPTIONS) <= views:
            self._create_all(con)

    @staticmethod
    def _writable_spec(table: str) -> schema.TableSpec:
        spec = schema.TABLES.get(table)
        if spec is None:
            known = ", ".join(n for n, s in schema.TABLES.items() if not s.derived)
            raise StoreError(f"unknown table {table!r}; polymath writes only to: {known}")
        if spec.derived:
            raise StoreError(
                f"table {table!r} is derived from eval_samples at ingest; write eval_samples instead"
            )
        return spec

    @staticmethod
    def _check_columns(table: str, spec: schema.TableSpec, df: pd.DataFrame) -> None:
        have = [str(c) for c in df.columns]
        missing = [c for c in spec.column_names if c not in have]
        unknown = [c for c in have if c not in spec.column_names]
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"missing column(s) {missing}")
            if unknown:
                parts.append(f"unknown column(s) {unknown}")
            raise StoreError(
                f"rows for table {table!r} have {' and '.join(parts)}; "
                f"the table's columns are {spec.column_names} (see evaluation.schema.TABLES)"
            )

    @staticmethod
    def _check_where(table: str, spec: schema.TableSpec, df: pd.DataFrame, where: dict[str, object]) -> None:
        for col, value in where.items():
            if col not in spec.column_names:
                raise StoreError(
                    f"replace(where=...) names column {col!r}, which table {table!r} does not have; "
                    f"use one of {spec.column_names}"
                )
            _literal_check(value)
            if table == "eval_samples" and col not in schema.PROBLEM_KEY:
                raise StoreError(
                    f"eval_samples are replaced whole problems at a time: where may only name "
                    f"{list(schema.PROBLEM_KEY)}, not {col!r}"
                )
            column = df[col]
            matches = column.isna() if value is None else column == value
            if not bool(matches.all()):
                bad = column[~matches].iloc[0]
                raise StoreError(
                    f"rows for table {table!r} must all have {col} = {value!r} (the replace key), "
                    f"but one has {bad!r}; split the rows by {col} or widen the where filter"
                )

    @staticmethod
    def _check_novelty(df: pd.DataFrame) -> None:
        bad = (df["new_bigrams"] < 0) | (df["new_bigrams"] > df["n_bigrams"])
        if bool(bad.any()):
            row = df[bad].iloc[0]
            raise StoreError(
                f"eval_samples row {row['problem_id']!r} sample {row['sample_idx']} has new_bigrams="
                f"{row['new_bigrams']} outside 0..n_bigrams={row['n_bigrams']}; compute both columns "
                "with evaluation.metrics.bigram_novelty over the problem's completions in sample order"
            )

    @staticmethod
    def _where_clause(where: dict[str, object]) -> tuple[str, list[object]]:
        if not where:
            return "TRUE", []
        parts, params = [], []
        for col, value in where.items():
            if value is None:
                parts.append(f"{schema.quote_ident(col)} IS NULL")
            else:
                parts.append(f"{schema.quote_ident(col)} = ?")
                params.append(value)
        return " AND ".join(parts), params

    def comparisons_stale(self) -> bool:
        """Whether an evaluation finished after the comparison tables were last computed (or they never were):
        a refresh cut off by a busy database is redone by the next ingest or run."""
        if not self.path.exists():
            return False
        try:
            now = self.query("SELECT max(finished_at) AS newest, count(*) AS n FROM runs WHERE stage = 'evaluate'")
            done = self.query("SELECT newest_evaluation AS newest, evaluations AS n FROM comparisons_state")
        except StoreError:  # tables not there yet: nothing evaluated, or a database from before the state table
            return bool(self._has_evaluations())
        if not int(now.n[0]):
            return False
        return done.empty or (now.newest[0], int(now.n[0])) != (done.newest[0], int(done.n[0]))

    def _has_evaluations(self) -> bool:
        try:
            return int(self.query("SELECT count(*) AS n FROM runs WHERE stage = 'evaluate'").n[0]) > 0
        except StoreError:
            return False

    def refresh_comparisons(self) -> int:
        """Recompute ``eval_comparisons`` and ``merge_summary`` from the evaluations, in one transaction, and note
        which evaluations they cover (``comparisons_state``)."""
        from evaluation import compare

        runs = self.query("SELECT run_key, config, inputs, finished_at FROM runs WHERE stage = 'evaluate'")
        problems = self.query(
            "SELECT eval_run, model_label, benchmark, problem_id, accuracy, n_samples, n_correct FROM eval_problems "
            "ORDER BY ALL"
        )
        merges = self.query(
            "SELECT m.run_key, m.method, m.label, m.scale, r.inputs FROM merge_runs m "
            "LEFT JOIN runs r ON r.stage = 'merge' AND r.run_key = m.run_key"
        )
        tables = {
            "eval_comparisons": (compare.comparisons(problems, runs) if len(runs)
                                 else pd.DataFrame(columns=compare.COLUMNS), compare.COLUMNS),
            "merge_summary": (compare.merge_summary(problems, runs, merges) if len(runs) and len(merges)
                              else pd.DataFrame(columns=compare.MERGE_COLUMNS), compare.MERGE_COLUMNS),
        }
        with self._transaction(f"could not refresh the comparison tables in {self.path}") as con:
            self._create_all_if_missing(con)
            for name, (table, columns) in tables.items():
                incoming = pa.Table.from_pandas(table[columns], preserve_index=False)
                con.register(_INCOMING, incoming)
                con.execute(f"DELETE FROM {name}")
                cols = ", ".join(schema.quote_ident(c) for c in columns)
                con.execute(f"INSERT INTO {name} ({cols}) SELECT {cols} FROM {_INCOMING}")
                con.unregister(_INCOMING)
            con.execute("DELETE FROM comparisons_state")
            con.execute("INSERT INTO comparisons_state SELECT max(finished_at), count(*) FROM runs "
                        "WHERE stage = 'evaluate'")
        return sum(len(t) for t, _ in tables.values())

    # -- reads -------------------------------------------------------------

    def query(self, sql: str, params: list[Any] | Mapping[str, Any] | None = None) -> pd.DataFrame:
        """Run SQL on a read-only connection and return the result as a DataFrame."""
        con = self._connect(read_only=True)
        try:
            result = con.execute(sql, params) if params is not None else con.execute(sql)
            if result.description is None:
                return pd.DataFrame()
            return result.df()
        except duckdb.Error as err:
            if "read-only mode" in str(err):
                raise StoreError(
                    f"queries open {self.path} read-only, so this statement was refused: {err}. "
                    "Results are written by `polymath run`; use SELECT here (--format csv or json exports)"
                ) from err
            if isinstance(err, (duckdb.PermissionException, duckdb.InvalidInputException)) and (
                    "disabled" in str(err) or "locked" in str(err)):
                raise StoreError(
                    f"queries read only the results database {self.path}: files, other databases, extensions and "
                    f"settings are out of reach ({str(err).splitlines()[0]}). Use SELECT on its tables and views "
                    "(polymath tables lists them); --format csv or json exports the result"
                ) from err
            raise StoreError(f"query failed: {err}\nSQL: {sql.strip()}") from err
        finally:
            con.close()

    def tables(self) -> pd.DataFrame:
        """name, kind (table/view), rows and description of every relation in the database."""
        con = self._connect(read_only=True)
        try:
            rels = con.execute(
                "SELECT table_name AS name, 'table' AS kind FROM duckdb_tables() "
                "WHERE NOT internal AND schema_name = 'main' "
                "UNION ALL SELECT view_name, 'view' FROM duckdb_views() "
                "WHERE NOT internal AND schema_name = 'main' ORDER BY kind, name"
            ).fetchall()
            rows = []
            for name, kind in rels:
                count = con.execute(f"SELECT count(*) FROM {schema.quote_ident(name)}").fetchone()[0]
                if kind == "table":
                    spec = schema.TABLES.get(name)
                    description = spec.description if spec else ""
                else:
                    description = schema.VIEW_DESCRIPTIONS.get(name, "")
                rows.append((name, kind, int(count), description))
        except duckdb.Error as err:
            raise StoreError(f"cannot list the tables of {self.path}: {err}") from err
        finally:
            con.close()
        return pd.DataFrame(rows, columns=["name", "kind", "rows", "description"])
