"""Results-store benchmark: bulk ingest of eval_samples against row-by-row inserts.

    .venv/bin/python bench/store.py [--rows 1000000] [--slice 5000]

Measured in one run on the same machine:
- ``Store.replace`` of ``--rows`` synthetic eval_samples rows (Arrow registered,
  one INSERT ... SELECT, derived per-problem tables refreshed in the same
  transaction), first ingest and an idempotent rerun;
- the bare INSERT ... SELECT of the same rows, without the derived refresh;
- the peer: DuckDB ``executemany`` row by row on a ``--slice`` of the rows,
  extrapolated to ``--rows``;
- the latency of the summary views over the ingested rows, and of the same
  summary computed from eval_samples alone (what the derived tables save).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation import schema  # noqa: E402
from evaluation.store import Store  # noqa: E402
from evaluation.synthetic import synthetic_samples  # noqa: E402

MODELS = ("base", "expert:arith", "expert:logic", "merged:robustmerge")
BENCHMARKS = ("arith", "gsm8k")
K = 8


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def ingest(store: Store, df: pd.DataFrame) -> None:
    for model, part in df.groupby("model_label", sort=False):
        store.replace("eval_samples", part, {"eval_run": "bench", "model_label": model})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--slice", type=int, default=5_000, help="rows inserted one by one by the peer")
    parser.add_argument("--repeats", type=int, default=3, help="view latency: best of this many")
    args = parser.parse_args()

    per_group = len(MODELS) * len(BENCHMARKS) * K
    n_problems = max(1, args.rows // per_group)
    t_gen, df = timed(
        lambda: synthetic_samples(n_problems, K, models=MODELS, benchmarks=BENCHMARKS, eval_run="bench")
    )
    rows = len(df)
    print(f"generated {rows:,} rows ({df.memory_usage(deep=True).sum() / 2**20:.0f} MiB) in {t_gen:.1f} s, "
          "bigram novelty included (a sampling-side cost)")
    cols = schema.TABLES["eval_samples"].column_names

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "polymath.duckdb")
        store.ensure_schema()
        t_first, _ = timed(lambda: ingest(store, df))
        t_rerun, _ = timed(lambda: ingest(store, df))
        counts = store.query("SELECT count(*) AS n FROM eval_samples")["n"].iloc[0]
        assert counts == rows, f"rerun changed the row count: {counts} != {rows}"

        # The bare bulk path, no derived tables: a fresh file, one INSERT ... SELECT,
        # closed (checkpointed) inside the timing as Store.replace is.
        raw = Path(tmp) / "raw.duckdb"
        con = duckdb.connect(str(raw))
        con.execute(schema.create_table_sql("eval_samples"))
        con.close()

        def bare():
            c = duckdb.connect(str(raw))
            c.register("incoming", pa.Table.from_pandas(df[cols], preserve_index=False))
            c.execute(f"INSERT INTO eval_samples SELECT {', '.join(cols)} FROM incoming")
            c.close()

        t_bare, _ = timed(bare)
        con = duckdb.connect(str(raw))

        # The peer: executemany, one parameter row at a time, same table layout.
        con.execute("DELETE FROM eval_samples")
        part = df[cols].iloc[: args.slice]
        values = [tuple(None if (isinstance(v, float) and np.isnan(v)) else v for v in r)
                  for r in part.itertuples(index=False, name=None)]
        placeholders = ", ".join("?" for _ in cols)
        t_rowwise, _ = timed(lambda: con.executemany(f"INSERT INTO eval_samples VALUES ({placeholders})", values))
        con.close()
        t_rowwise_full = t_rowwise / len(values) * rows

        def best(sql: str) -> float:
            return min(timed(lambda: store.query(sql))[0] for _ in range(args.repeats))

        summary_sql = "SELECT * FROM eval_summary"
        t_summary = best(summary_sql)
        t_corr = best("SELECT * FROM entropy_vs_accuracy")
        # The same headline numbers straight from the samples: pass@n and avg@n only.
        t_direct = best(
            "SELECT eval_run, model_label, benchmark, avg(acc) AS avg_at_k, avg((c > 0)::DOUBLE) AS pass_at_n, "
            "avg(h) AS mean_entropy FROM (SELECT eval_run, model_label, benchmark, problem_id, "
            "avg(correct::DOUBLE) acc, count(*) FILTER (WHERE correct) c, avg(mean_entropy) h "
            "FROM eval_samples GROUP BY ALL) GROUP BY ALL"
        )
        n_summary = len(store.query(summary_sql))

    def line(name: str, seconds: float, n: int | None = None) -> str:
        rate = f"{n / seconds:>14,.0f}" if n else f"{'':>14}"
        return f"{name:<58}{seconds:>10.3f}{rate}"

    print()
    print(f"{'measurement':<58}{'seconds':>10}{'rows/s':>14}")
    print("-" * 82)
    print(line(f"Store.replace, first ingest ({rows:,} rows, with derived)", t_first, rows))
    print(line("Store.replace, rerun (delete + insert + derived)", t_rerun, rows))
    print(line("bare INSERT ... SELECT from Arrow + close (no derived)", t_bare, rows))
    print(line(f"executemany row by row ({len(values):,} rows measured)", t_rowwise, len(values)))
    print(line(f"executemany extrapolated to {rows:,} rows", t_rowwise_full, rows))
    print(line(f"view eval_summary ({n_summary} rows)", t_summary))
    print(line("view entropy_vs_accuracy", t_corr))
    print(line("avg@n / pass@n / entropy straight from eval_samples", t_direct))
    print("-" * 82)
    print(f"Store.replace vs executemany: {t_rowwise_full / t_first:,.0f}x faster "
          f"(target >= 200,000 rows/s: {'met' if rows / t_first >= 200_000 else 'NOT met'})")


if __name__ == "__main__":
    main()
