"""The polymath command line: exit codes and messages a user sees."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from evaluation.store import Store
from flows.cli import app
from tests.test_merging_adapters import build_base, build_expert

runner = CliRunner()


@pytest.fixture()
def workspace(tmp_path):
    store = Store(tmp_path / "polymath.duckdb")
    store.ensure_schema()
    runs = pd.DataFrame([{
        "stage": "curate", "run_key": "abc", "label": "curate", "config": "{}", "status": "finished",
        "started_at": pd.Timestamp("2026-01-01"), "finished_at": pd.Timestamp("2026-01-01 00:01"),
        "seconds": 60.0, "artifact_dir": "x", "inputs": "{}",
    }])
    store.replace("runs", runs, {"stage": "curate", "run_key": "abc"})
    return tmp_path


def test_sql_formats(workspace):
    out = runner.invoke(app, ["sql", "SELECT stage, run_key FROM runs", "--format", "csv", "-w", str(workspace)])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines() == ["stage,run_key", "curate,abc"]
    out = runner.invoke(app, ["sql", "SELECT run_key, seconds FROM runs", "--format", "json", "-w", str(workspace)])
    assert json.loads(out.output) == [{"run_key": "abc", "seconds": 60.0}]
    out = runner.invoke(app, ["sql", "SELECT run_key FROM runs", "-w", str(workspace)])
    assert out.exit_code == 0 and "abc" in out.output


def test_sql_is_read_only_and_bad_sql_fails_clearly(workspace):
    out = runner.invoke(app, ["sql", "DELETE FROM runs", "-w", str(workspace)])
    assert out.exit_code == 2
    assert Store(workspace / "polymath.duckdb").query("SELECT count(*) AS n FROM runs")["n"][0] == 1
    out = runner.invoke(app, ["sql", "SELEC * FROM runs", "-w", str(workspace)])
    assert out.exit_code == 2 and "error" in out.output.lower()


@pytest.mark.parametrize("statement", [
    "SELECT count(*) FROM read_csv('{outside}')",
    "SELECT * FROM glob('{outside_dir}/*')",
    "COPY (SELECT 42) TO '{outside_dir}/written.csv'",
    "ATTACH '{outside_dir}/other.duckdb' AS other",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "SELECT 1; SELECT count(*) FROM read_csv('{outside}')",
])
def test_sql_reads_the_results_database_and_nothing_else(workspace, tmp_path, statement):
    outside_dir = tmp_path / "outside"
    outside_dir.mkdir()
    outside = outside_dir / "secret.csv"
    outside.write_text("a,b\n1,2\n")
    before = sorted(p.name for p in outside_dir.iterdir())
    db_bytes = (workspace / "polymath.duckdb").read_bytes()
    sql = statement.format(outside=outside, outside_dir=outside_dir)
    out = runner.invoke(app, ["sql", sql, "-w", str(workspace)])
    assert out.exit_code == 2, out.output
    assert out.output.startswith("error:") and "Traceback" not in out.output
    assert len(out.output.strip().splitlines()) <= 10  # one message (wrapped at the terminal's width)
    assert "COPY (SELECT" not in out.output  # no advice to write files
    assert sorted(p.name for p in outside_dir.iterdir()) == before
    assert (workspace / "polymath.duckdb").read_bytes() == db_bytes


def test_tables_and_report_leave_the_database_untouched(workspace):
    db = workspace / "polymath.duckdb"
    stamp = (db.stat().st_mtime_ns, db.read_bytes())
    assert runner.invoke(app, ["tables", "-w", str(workspace)]).exit_code == 0
    assert runner.invoke(app, ["report", "-w", str(workspace)]).exit_code == 0
    assert (db.stat().st_mtime_ns, db.read_bytes()) == stamp


def test_sql_without_database_says_what_to_do(tmp_path):
    out = runner.invoke(app, ["sql", "SELECT 1", "-w", str(tmp_path / "empty")])
    assert out.exit_code == 2 and "polymath run" in out.output


def test_tables_lists_schema(workspace):
    out = runner.invoke(app, ["tables", "-w", str(workspace)])
    assert out.exit_code == 0
    for name in ("runs", "curation_metrics", "train_steps", "eval_samples", "merge_runs", "eval_summary"):
        assert name in out.output


def test_run_with_unknown_key_exits_with_suggestion(tmp_path):
    out = runner.invoke(app, ["run", "--set", "train.stesp=3", "-w", str(tmp_path)])
    assert out.exit_code == 2
    assert "train.steps" in out.output


def test_merge_command_writes_a_peft_adapter_and_records_it(tmp_path):
    base = build_base(tmp_path / "base")
    experts = [build_expert(base, tmp_path / f"e{i}", seed=i) for i in range(2)]
    out_dir = tmp_path / "merged"
    result = runner.invoke(app, ["merge", *map(str, experts), "--out", str(out_dir), "--method", "robustmerge",
                                 "--keep", "0.3", "--workspace", str(tmp_path / "ws")])
    assert result.exit_code == 0, result.output
    assert (out_dir / "adapter_config.json").exists() and (out_dir / "adapter_model.safetensors").exists()
    rows = Store(tmp_path / "ws" / "polymath.duckdb").query("SELECT method, params FROM merge_runs")
    assert rows["method"].tolist() == ["robustmerge"] and json.loads(rows["params"][0])["keep"] == 0.3
    bad = runner.invoke(app, ["merge", *map(str, experts), "--out", str(tmp_path / "m2"), "--keep", "3"])
    assert bad.exit_code == 2 and "keep" in bad.output
    # an option the method does not read is named with the ones it does, and nothing is written
    unread = runner.invoke(app, ["merge", *map(str, experts), "--out", str(tmp_path / "m3"), "--method", "ties",
                                 "--lam", "3", "--density", "0.4"], env={"COLUMNS": "200"})
    assert unread.exit_code == 2 and "--lam: not a parameter of ties (it reads: rank, weights, density" in unread.output
    assert not (tmp_path / "m3").exists()


def test_merge_options_are_every_methods_parameters(tmp_path):
    """One option per parameter a method declares: a new parameter cannot be missing from the command line."""
    from merging.methods import SHARED_OPTIONS, METHODS

    text = runner.invoke(app, ["merge", "--help"], env={"COLUMNS": "300"}).output
    declared = {f for _, cls in METHODS.items() for f in cls.Params.model_fields} - set(SHARED_OPTIONS)
    assert declared >= {"core_merge", "knots_merge", "knots_trim", "clamp_ratio", "majority_sign_method"}
    for field in declared:
        assert "--" + field.replace("_", "-") in text, field
    base = build_base(tmp_path / "base")
    experts = [build_expert(base, tmp_path / f"e{i}", seed=i) for i in range(2)]
    ok = runner.invoke(app, ["merge", *map(str, experts), "--out", str(tmp_path / "c"), "--method", "core-space",
                             "--core-merge", "iso-c", "--weights", "1,0.5"])
    assert ok.exit_code == 0, ok.output
    report = json.loads((tmp_path / "c" / "merge_report.json").read_text())
    assert report["parameters"]["core_merge"] == "iso-c" and report["parameters"]["weights"] == [1.0, 0.5]
    bad = runner.invoke(app, ["merge", *map(str, experts), "--out", str(tmp_path / "d"), "--method", "core-space",
                              "--core-merge", "mean"])
    assert bad.exit_code == 2 and "core_merge" in bad.output and not (tmp_path / "d").exists()


@pytest.mark.parametrize("content, says", [
    ("", "no training problems"),
    ('{"prompt": "1+1", "answer": "2"}\n{not json\n', "line 2: not valid JSON"),
    ('{"question": "1+1", "answer": "2"}\n', "line 1: field 'prompt' (data.fields.prompt) is missing"),
])
def test_a_bad_jsonl_costs_one_short_message_and_exit_2(tmp_path, content, says):
    import subprocess
    import sys

    path = tmp_path / "data.jsonl"
    path.write_text(content)
    out = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "-w", str(tmp_path / "ws"), "--set", "data.format=jsonl",
         "--set", f"data.path={path}"], capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "COLUMNS": "200"},
    )
    text = out.stdout + out.stderr
    assert out.returncode == 2 and says in text and str(path) in text
    assert len(text.strip().splitlines()) <= 5 and "Traceback" not in text
    assert not (tmp_path / "ws" / "artifacts").exists()  # nothing started


@pytest.mark.parametrize("rows, message", [
    ([{"prompt": f"{i}+{i}", "answer": str(2 * i)} for i in range(30)], "have no worked solution"),
    ([{"prompt": "a long word problem " * 20 + str(i), "answer": f"{'step ' * 10}\n#### {i}"} for i in range(30)],
     "do not fit its 256 positions"),
])
def test_the_tiny_model_on_data_it_cannot_learn_is_refused_before_anything_runs(tmp_path, rows, message):
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    gsm = ["--set", "data.answer_format=gsm8k"] if "####" in rows[0]["answer"] else []
    out = runner.invoke(app, ["run", "--set", "data.format=jsonl", "--set", f"data.path={source}", *gsm,
                              "-w", str(tmp_path / "ws")])
    text = " ".join(out.output.split())  # unwrapped from the terminal's width
    assert out.exit_code == 2 and message in text and "model.source: smollm" in text
    assert "Traceback" not in text and not (tmp_path / "ws").exists()


def test_a_user_error_inside_a_stage_is_printed_once(micro_config_path, prefect_api_url, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    polymath = str(Path(sys.executable).with_name("polymath"))
    # the session's server: a temporary one of its own would add its startup to the test, not to what it checks
    done = subprocess.run([polymath, "run", "-c", str(micro_config_path), "--set", "curate.k=100000",
                           "-w", str(tmp_path / "ws")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PREFECT_API_URL": prefect_api_url})
    out = done.stdout + done.stderr
    assert done.returncode == 2, out[-3000:]
    assert out.count("exceeds the n=") == 1 and "Traceback" not in out, out[-3000:]
    error = out[out.index("error:"):].split("\n")
    assert len([line for line in error if line.strip() and "prefect" not in line]) <= 5
