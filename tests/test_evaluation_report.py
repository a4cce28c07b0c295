"""The markdown report renders from the database alone, empty or filled."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from evaluation import schema
from evaluation.report import markdown_table, write_report
from evaluation.store import Store
from evaluation.synthetic import synthetic_samples
from polymath.errors import StoreError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "polymath.duckdb")
    s.ensure_schema()
    return s


def _frame(table: str, rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=schema.TABLES[table].column_names)


def fill(store: Store) -> None:
    now = pd.Timestamp("2025-03-01 10:00")
    store.replace("runs", _frame("runs", [("evaluate", "e1", "eval", "{}", "finished", now, now, 12.0, "a/e1", "{}")]),
                  {"run_key": "e1"})
    store.replace("curation_metrics", _frame("curation_metrics", [
        ("c1", "kmeans-centroid", 0, "vendi_score", 30.0), ("c1", "random", 0, "vendi_score", 20.0),
        ("c1", "random", 0, "coverage_mean", 0.4)]), {"run_key": "c1"})
    for expert in ("arith", "logic"):
        rows = [(f"t-{expert}", expert, step, metric, value)
                for step in range(5)
                for metric, value in (("reward", 0.1 * step), ("entropy", 1.0 - 0.1 * step), ("lr", 1e-5))]
        store.replace("train_steps", _frame("train_steps", rows), {"run_key": f"t-{expert}"})
    samples = synthetic_samples(12, 4, models=("base", "expert:arith", "merged:robustmerge"),
                                benchmarks=("arith", "logic"), eval_run="e1")
    for model, part in samples.groupby("model_label"):
        store.replace("eval_samples", part, {"eval_run": "e1", "model_label": model})
    store.refresh_comparisons()
    store.replace("merge_runs", _frame("merge_runs", [("m1", "robustmerge", "merged:robustmerge", "{}", 2.0, 16, 2, 0.5,
                                                     1.2, 0.7, "{}")]),
                  {"run_key": "m1"})


def test_report_on_an_empty_store_says_no_data_yet(store: Store, tmp_path: Path):
    path = write_report(store, tmp_path / "report")
    text = path.read_text()
    assert path == tmp_path / "report" / "report.md"
    for stage in ("curate", "train", "evaluate", "merge"):
        assert f"polymath run --stage {stage}" in text
    assert "No runs recorded yet" in text
    assert not list(path.parent.glob("*.png"))


def test_report_on_a_filled_store_has_tables_and_plots(store: Store, tmp_path: Path):
    fill(store)
    path = write_report(store, tmp_path / "report")
    text = path.read_text()
    for name in ("train_curves.png", "pass_at_k.png", "entropy_vs_accuracy.png"):
        assert f"]({name})" in text
        assert (path.parent / name).read_bytes()[:8] == PNG_MAGIC
    assert "No data yet" not in text
    summary = store.query("SELECT * FROM eval_summary WHERE k = 4 AND model_label = 'base' AND benchmark = 'arith'")
    cell = f"{summary.avg_at_k[0]:.3f} / {summary.pass_at_k[0]:.3f} / {summary.maj_at_k[0]:.3f}"
    assert f"| e1 | base | {cell} |" in text
    assert "| kmeans-centroid | – | 30.000 |" in text
    assert "merged:robustmerge" in text and "robustmerge" in text
    learned = text.split("## Learned or sharpened")[1].split("\n## ")[0]
    assert "| expert:arith | arith | avg@k |" in learned and "| expert:arith | arith | pass@4 |" in learned
    assert "logic" not in learned  # an expert is judged on its own domain


def test_report_with_only_some_stages_done(store: Store, tmp_path: Path):
    store.replace("train_steps", _frame("train_steps", [("t", "arith", 0, "reward", 0.5)]), {"run_key": "t"})
    text = write_report(store, tmp_path / "r").read_text()
    assert "](train_curves.png)" in text
    assert "polymath run --stage evaluate" in text


def test_report_needs_the_database(tmp_path: Path):
    with pytest.raises(StoreError, match="polymath run"):
        write_report(Store(tmp_path / "none.duckdb"), tmp_path / "r")


def test_markdown_table_formats_and_escapes():
    df = pd.DataFrame({"a": ["x|y", None], "b": [0.12345, float("nan")], "c": [3, 4]})
    assert markdown_table(df, 2).splitlines() == [
        "| a | b | c |", "| --- | --- | --- |", "| x\\|y | 0.12 | 3 |", "| – | – | 4 |"]


def test_merge_tables_pivot_the_sweep_and_headline_seen_and_unseen_with_intervals():
    from evaluation.report import merge_headline, sweep_grid

    sweep = pd.DataFrame({"label": ["merged:ties"] * 2 + ["merged:dare"] * 2, "scale": [0.5, 1.0, 0.5, 1.0],
                          "accuracy": [0.4, 0.5, 0.45, 0.3], "chosen": [False, True, True, False]})
    grid = sweep_grid(sweep)
    assert list(grid.columns) == ["label", "x0.5", "x1"]
    assert grid.set_index("label").loc["merged:ties"].tolist() == ["0.400", "0.500*"]
    assert grid.set_index("label").loc["merged:dare"].tolist() == ["0.450*", "0.300"]

    def row(label, benchmark, seen, vs=(float("nan"),) * 3, left_out=None):
        return {"model_label": label, "left_out": left_out, "benchmark": benchmark, "seen": seen, "scale": 1.0,
                "accuracy": 0.5, "normalized": 0.9, "retained_gain": 0.6, "retained_low": 0.4,
                "retained_high": 0.8, "vs_task_arithmetic": vs[0], "vs_ta_low": vs[1], "vs_ta_high": vs[2]}

    summary = pd.DataFrame([
        row("merged:task-arithmetic", "(mean of seen)", True),
        row("merged:ties-without-b", "(mean of seen)", True, (0.02, -0.01, 0.05), "b"),
        row("merged:ties-without-b", "b", False, (0.04, 0.01, 0.07), "b"),
    ])
    head = merge_headline(summary).set_index("model_label")
    assert head.loc["merged:task-arithmetic", "seen: vs TA (points)"] == "–"
    assert pd.isna(head.loc["merged:task-arithmetic", "unseen: accuracy"])
    assert head.loc["merged:ties-without-b", "seen: retained gain"] == "0.60 [0.40, 0.80]"
    assert head.loc["merged:ties-without-b", "seen: vs TA (points)"] == "+2.0 [-1.0, +5.0]"
    assert head.loc["merged:ties-without-b", "unseen: vs TA (points)"] == "+4.0 [+1.0, +7.0]"
