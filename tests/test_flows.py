"""The whole pipeline on a micro config, under a temporary Prefect server."""

from __future__ import annotations

import json

import pandas

import pytest

from evaluation.store import Store
from flows.runners import under
from flows.stage_flows import merge_flow, pipeline, train_flow
from pipeline.config import load_config
from pipeline.execution import execution_policy
from polymath.errors import StageError
from polymath.workspace import Workspace


def _counts(ws: Workspace) -> dict[str, int]:
    store = Store(ws.db_path)
    return {t: int(store.query(f"SELECT count(*) AS n FROM {t}")["n"][0])
            for t in ("runs", "curation_selection", "curation_metrics", "train_steps", "eval_samples", "merge_runs")}


def _finished_at(ref) -> str:
    return json.loads((ref.dir / "manifest.json").read_text())["finished_at"]


@pytest.fixture(scope="module")
def first_run(prefect_harness, micro_config_path, tmp_path_factory):
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    cfg = load_config(micro_config_path)
    result = pipeline(cfg, str(ws.root))
    return cfg, ws, result


def test_pipeline_fills_every_table(first_run):
    cfg, ws, result = first_run
    counts = _counts(ws)
    assert counts["curation_selection"] == cfg.curate.k
    # every method over all experts, and again without gcd's expert (leave-one-out)
    assert counts["train_steps"] > 0 and counts["merge_runs"] == 2 * len(cfg.merge.methods)
    labels = {r.label for r in result.evals}
    experts = {"expert:arithmetic", "expert:gcd", "expert:reverse"}
    assert labels == {"base", "base@greedy", *experts, *(f"{e}@greedy" for e in experts),
                      "merged:robustmerge", "merged:task-arithmetic", "merged:robustmerge-without-gcd",
                      "merged:task-arithmetic-without-gcd"}
    store = Store(ws.db_path)
    summary = store.query("SELECT DISTINCT model_label, benchmark FROM eval_summary")
    assert len(summary) == len(labels) * 3
    greedy = store.query("SELECT DISTINCT k FROM eval_summary WHERE model_label LIKE '%@greedy'")
    assert greedy.k.tolist() == [1]
    # every sampled model against the base (avg@k and pass@2), per benchmark; greedy against base@greedy
    compared = store.query("SELECT model_label, benchmark, reference, metric, ci_low, diff, ci_high "
                           "FROM eval_comparisons")
    assert set(compared.model_label) == labels - {"base", "base@greedy"}
    greedy_rows = compared[compared.model_label.str.endswith("@greedy")]
    assert (greedy_rows.reference == "base@greedy").all() and (greedy_rows.metric == "avg@k").all()
    assert len(greedy_rows) == len(experts) * 3
    sampled = compared.drop(greedy_rows.index)
    assert (sampled.reference == "base").all() and sorted(set(sampled.metric)) == ["avg@k", "pass@2"]
    assert len(sampled) == (len(labels) - 2 - len(experts)) * 3 * 2
    assert ((compared.ci_low <= compared["diff"]) & (compared["diff"] <= compared.ci_high)).all()
    for expert in result.experts:
        assert (expert.dir / "adapter" / "adapter_model.safetensors").exists()
        assert (expert.dir / "curves.png").exists()
    assert not list(ws.root.rglob(".tmp-*")) and not [p for p in ws.root.rglob(".partial-*") if p.suffix != ".lock"]


def test_two_workers_run_trainings_evaluations_and_merges_side_by_side(prefect_harness, micro_config_path, tmp_path):
    cfg = load_config(micro_config_path, ["workers=2"])
    out = under(train_flow, execution_policy(cfg))(cfg, str(tmp_path))
    assert len(out.experts) == 3 and not any(r.skipped for r in out.experts)
    for expert in out.experts:
        assert (expert.dir / "adapter" / "adapter_model.safetensors").exists()
    store = Store(Workspace(tmp_path).db_path)
    steps = store.query("SELECT DISTINCT expert FROM train_steps ORDER BY 1")
    assert steps.expert.tolist() == ["arithmetic", "gcd", "reverse"]
    # DARE once per seed, next to the deterministic task arithmetic (merged once)
    cfg = load_config(micro_config_path, ["workers=2", "merge.methods=[task-arithmetic, dare]", "merge.seeds=[0, 1]",
                                          "merge.leave_out=[]"])
    out = under(merge_flow, execution_policy(cfg))(cfg, str(tmp_path))
    assert [m.label for m in out.merges] == ["merged:task-arithmetic", "merged:dare-seed0", "merged:dare-seed1"]
    params = store.query("SELECT label, params FROM merge_runs ORDER BY label")
    seeds = {r.label: json.loads(r.params).get("seed") for r in params.itertuples()}
    assert seeds == {"merged:dare-seed0": 0, "merged:dare-seed1": 1, "merged:task-arithmetic": None}
    summary = store.query("SELECT model_label, vs_task_arithmetic FROM merge_summary WHERE benchmark = 'gcd'")
    assert summary.set_index("model_label").vs_task_arithmetic.notna().to_dict() == {
        "merged:task-arithmetic": False, "merged:dare-seed0": True, "merged:dare-seed1": True}


def test_merges_pick_their_scale_on_validation_and_summarize_against_task_arithmetic(first_run):
    cfg, ws, result = first_run
    store = Store(ws.db_path)
    sweep = store.query("SELECT label, scale, benchmark, chosen FROM merge_sweep ORDER BY ALL")
    # every method, both expert sets, every grid value, each merged domain's validation split
    assert len(sweep) == 2 * 2 * 3 + 2 * 2 * 2
    assert set(sweep[sweep.label == "merged:robustmerge-without-gcd"].benchmark) == {"arithmetic", "reverse"}
    chosen = sweep[sweep.chosen].groupby("label").scale.nunique()
    assert (chosen == 1).all() and len(chosen) == 4
    runs = store.query("SELECT label, scale FROM merge_runs ORDER BY label")
    picked = sweep[sweep.chosen].drop_duplicates("label").set_index("label").scale
    assert runs.set_index("label").scale.to_dict() == picked.to_dict()
    summary = store.query("SELECT * FROM merge_summary")
    loo = summary[summary.model_label == "merged:robustmerge-without-gcd"]
    assert set(loo.benchmark) == {"arithmetic", "gcd", "reverse", "(mean of seen)"}
    assert loo.set_index("benchmark").seen.to_dict() == {"arithmetic": True, "gcd": False, "reverse": True,
                                                         "(mean of seen)": True}
    assert loo.left_out.dropna().unique().tolist() == ["gcd"]
    full = summary[summary.model_label == "merged:robustmerge"].set_index("benchmark")
    assert full.seen.all() and full.loc["(mean of seen)", "n_problems"] == 3 * full.loc["gcd", "n_problems"]
    ta = summary[summary.model_label == "merged:task-arithmetic"]
    assert ta.vs_task_arithmetic.isna().all() and full.vs_task_arithmetic.notna().all()


def test_rerun_skips_every_stage_and_keeps_counts(first_run):
    cfg, ws, result = first_run
    before = _counts(ws)
    again = pipeline(cfg, str(ws.root))
    refs = [again.data, again.curate, again.model, *again.experts, *again.merges, *again.evals]
    assert all(r.skipped for r in refs)
    assert [r.key for r in again.evals] == [r.key for r in result.evals]
    assert _counts(ws) == before


def test_every_stage_run_of_the_plan_reports_to_the_progress_listeners(first_run):
    from tasks import progress
    from pipeline.plan import plan_runs

    cfg, ws, _ = first_run
    heard = []
    with progress.listening(heard.append):
        pipeline(cfg, str(ws.root))
    assert sorted((r.stage, r.key) for r in heard) == sorted((r.stage, r.key) for r in plan_runs(cfg, ws))


def test_an_unchanged_cli_rerun_starts_no_flow_and_prints_the_results(first_run, micro_config_path, monkeypatch):
    from typer.testing import CliRunner

    import flows.stage_flows
    from flows.cli import app

    _, ws, _ = first_run
    monkeypatch.setattr(flows.stage_flows, "select_flow", lambda *a, **k: pytest.fail("an unchanged rerun started a flow"))
    out = CliRunner().invoke(app, ["run", "-c", str(micro_config_path), "-w", str(ws.root)])
    assert out.exit_code == 0, out.output
    assert "nothing to run" in out.output and "merged:robustmerge" in out.output and "report:" in out.output


def test_status_plans_the_flows_keys_and_names_what_a_change_makes_stale(first_run, micro_config_path):
    from typer.testing import CliRunner

    from flows.cli import app
    from pipeline.plan import plan_runs

    cfg, ws, result = first_run
    rows = plan_runs(cfg, ws)
    refs = [result.data, result.curate, result.model, *result.experts, *result.merges, *result.evals]
    assert sorted(r.key for r in rows) == sorted(r.key for r in refs)  # the plan is the flow's, run for run
    assert {r.state for r in rows} == {"finished"}
    out = CliRunner().invoke(app, ["status", "-c", str(micro_config_path), "-w", str(ws.root)])
    assert out.exit_code == 0 and f"all {len(rows)} stage runs are up to date" in out.output

    fresh = plan_runs(cfg, Workspace(ws.root.parent / "empty"))  # a new workspace: everything missing
    assert [r.key for r in fresh] == [r.key for r in rows] and {r.state for r in fresh} == {"missing"}
    jsonl = plan_runs(load_config(micro_config_path, ["data.format=jsonl", "data.path=x.jsonl"]), Workspace(
        ws.root.parent / "empty"))
    # a file without a domain column: its one domain is known
    assert [r.label for r in jsonl if r.stage == "train"] == ["expert:default"]

    changed = plan_runs(load_config(micro_config_path, ["train.lr=0.001"]), ws)
    stale = {(r.stage, r.label) for r in changed if r.state == "stale"}
    expected = ({("train", e.label) for e in result.experts} | {("merge", m.label) for m in result.merges}
                | {("evaluate", r.label) for r in result.evals if r.label not in ("base", "base@greedy")})
    assert stale == expected and not [r for r in changed if r.state == "missing"]
    assert next(r for r in changed if r.stage == "train").why == "config: lr 0.0005 -> 0.001"
    assert next(r for r in changed if r.stage == "merge").why.startswith("input changed: expert:")


def test_a_reused_run_already_in_duckdb_is_not_ingested_again(first_run):
    from pipeline.ingest import ingest_all
    from pipeline.stage import StageRef

    _, ws, result = first_run
    reused = [StageRef(r.stage, r.key, r.dir, r.label, skipped=True) for r in result.evals]
    assert ingest_all(ws, reused) == {}
    store = Store(ws.db_path)
    lost = reused[1]
    con = store._connect(read_only=False)
    con.execute("DELETE FROM runs WHERE run_key = ?", [lost.key])
    con.close()
    totals = ingest_all(ws, reused)  # its runs row is gone: re-ingested, nothing else
    assert totals["eval_samples"] == len(store.query(f"SELECT * FROM eval_samples WHERE eval_run = '{lost.key}'"))
    assert "eval_comparisons" in totals and len(store.query(f"SELECT * FROM runs WHERE run_key = '{lost.key}'")) == 1


def test_single_stage_force_reruns_only_that_stage(first_run):
    cfg, ws, result = first_run
    curate_time = _finished_at(result.curate)
    out = train_flow(cfg, str(ws.root), ["train"])
    assert not any(r.skipped for r in out.experts)
    assert out.curate.skipped and out.model.skipped
    assert _finished_at(out.curate) == curate_time
    assert [r.key for r in out.experts] == [r.key for r in result.experts]


def test_config_change_reruns_that_stage_and_downstream_only(first_run):
    cfg, ws, result = first_run
    changed = cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": 0.002})})
    out = train_flow(changed, str(ws.root))
    assert out.curate.skipped and out.model.skipped
    assert {r.key for r in out.experts}.isdisjoint({r.key for r in result.experts})


def test_failing_stage_names_itself_and_keeps_earlier_artifacts(first_run, monkeypatch):
    cfg, ws, result = first_run
    import merging.merge

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(merging.merge, "merge_adapters", broken)
    with pytest.raises(StageError, match=r"stage merge \(merged:robustmerge\) failed: RuntimeError: disk full"):
        merge_flow(cfg, str(ws.root), ["merge"])
    for ref in [result.curate, result.model, *result.experts, *result.merges]:
        assert ws.is_finished(ref.stage, ref.key)
    assert not list(ws.root.rglob(".tmp-*")) and not [p for p in ws.root.rglob(".partial-*") if p.suffix != ".lock"]


def test_curate_stage_selects_from_a_math_word_problem_jsonl(tmp_path):
    """The same stage, pointed by config at a GSM8K-style JSONL, selects without code changes."""
    from pipeline import curate as curate_stage, data as data_stage
    from pipeline.curate import curated_problems

    rows = [{"question": f"Sam has {i} apples and buys {i % 7 + 2} more bags of {i % 5 + 3}. How many apples now?",
             "answer": f"{i} + {i % 7 + 2} * {i % 5 + 3}\n#### {i + (i % 7 + 2) * (i % 5 + 3)}"} for i in range(60)]
    path = tmp_path / "word_problems.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, [
        "data.format=jsonl", f"data.path={path}", "data.fields.prompt=question", "data.answer_format=gsm8k",
        "data.domain=math", "data.test_fraction=0.1", "curate.k=12", "curate.n_clusters=4",
    ])
    ws = Workspace(tmp_path / "ws")
    data = data_stage.run(cfg, ws)
    curate = curate_stage.run(cfg, ws, data=data)
    chosen = curated_problems(data, curate)
    assert len(chosen) == 12 and {p.domain for p in chosen} == {"math"}
    assert all(p.metadata["verifier"] == "numeric" for p in chosen)
    assert curate_stage.run(cfg, ws, data=data).skipped  # rerun: a cache hit


def test_curate_domains_names_a_missing_domain_and_the_ones_that_exist(micro_config_path, tmp_path):
    from pipeline import curate as curate_stage, data as data_stage

    cfg = load_config(micro_config_path, ["curate.domains=[legs]"])
    ws = Workspace(tmp_path)
    with pytest.raises(StageError, match=r"curate.domains names \['legs'\].*available: \['arithmetic', 'gcd', 'reverse'\]"):
        curate_stage.run(cfg, ws, data=data_stage.run(cfg, ws))


def test_evaluate_domains_sample_only_those_domains_and_name_a_missing_one(first_run):
    from pipeline import evaluate as evaluate_stage

    cfg, ws, result = first_run
    narrow = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"domains": ["gcd"]})})
    done = evaluate_stage.run(narrow, ws, model=result.model, data=result.data, target=result.experts[0])
    samples = pandas.read_parquet(done.dir / "eval_samples.parquet")
    assert set(samples.benchmark) == {"gcd"} and not done.skipped
    wrong = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"domains": ["legs"]})})
    with pytest.raises(StageError, match=r"evaluate.domains names \['legs'\].*available"):
        evaluate_stage.run(wrong, ws, model=result.model, data=result.data, target=result.experts[0])


def test_deployment_entry_point_runs_a_profile_by_name(first_run, micro_config_path, monkeypatch):
    """What a scheduled deployment calls: profile name + overrides in, run keys out (all reused here)."""
    from flows.deployments import run_profile

    cfg, ws, result = first_run
    monkeypatch.setenv("POLYMATH_PROFILES", str(micro_config_path.parent))
    monkeypatch.setenv("POLYMATH_DEPLOY_ROOT", str(ws.root.parent))
    out = run_profile(config=micro_config_path.stem, workspace=ws.root.name, stage="evaluate")
    assert out["curate"] == result.curate.key
    assert out["evals"] == [r.key for r in result.evals if not r.label.startswith("merged:")]


def test_every_deployment_in_prefect_yaml_names_a_flow_and_its_parameters():
    import importlib
    import inspect
    from pathlib import Path

    import yaml
    from prefect import Flow

    spec = yaml.safe_load((Path(__file__).parents[1] / "prefect.yaml").read_text())
    names = set()
    for deployment in spec["deployments"]:
        module, func = deployment["entrypoint"].rsplit(".", 1)
        flow_obj = getattr(importlib.import_module(module), func)
        assert isinstance(flow_obj, Flow), deployment["name"]
        accepted = set(inspect.signature(flow_obj.fn).parameters)
        assert set(deployment.get("parameters", {})) <= accepted, deployment["name"]
        names.add(deployment["name"])
    assert {"pipeline-nightly", "experiment-entropy"} <= names


def test_status_says_when_the_installed_versions_differ_from_a_finished_runs(first_run, micro_config_path,
                                                                             monkeypatch):
    from typer.testing import CliRunner

    import pipeline.plan
    from flows.cli import app
    from pipeline.plan import plan_runs, version_changes
    from polymath.workspace import package_versions

    cfg, ws, _ = first_run
    rows = plan_runs(cfg, ws)
    assert version_changes(ws, rows) == []
    installed = package_versions()
    monkeypatch.setattr(pipeline.plan, "package_versions", lambda: {**installed, "transformers": "0.0.1"})
    [line] = version_changes(ws, rows)
    assert line == (f"transformers 0.0.1 is installed; {len(rows)} finished runs used {installed['transformers']}")
    out = CliRunner().invoke(app, ["status", "-c", str(micro_config_path), "-w", str(ws.root)])
    assert out.exit_code == 0 and "versions differ: transformers 0.0.1 is installed" in out.output
    from polymath.workspace import CPU_KERNELS

    kernels = installed[CPU_KERNELS]  # recorded by every run: another kernel set gives other float results
    monkeypatch.setattr(pipeline.plan, "package_versions", lambda: {**installed, CPU_KERNELS: "OTHER"})
    assert version_changes(ws, rows) == [f"this machine's torch CPU kernels are OTHER; {len(rows)} finished runs "
                                         f"used {kernels}"]


def test_a_comparison_refresh_that_failed_is_redone_by_the_next_ingest(first_run, monkeypatch):
    import duckdb

    from evaluation.store import Store
    from pipeline.ingest import ingest_all

    cfg, ws, result = first_run
    store = Store(ws.db_path)
    refs = [result.data, result.curate, result.model, *result.experts, *result.merges,
            *result.evals]
    before = store.query("SELECT * FROM eval_comparisons ORDER BY ALL")
    merged = len(store.query("SELECT * FROM merge_summary"))
    con = duckdb.connect(str(ws.db_path))  # what a refresh cut off by a busy database leaves behind
    con.execute("DELETE FROM eval_comparisons")
    con.execute("DELETE FROM comparisons_state")
    con.close()
    assert store.comparisons_stale()
    totals = ingest_all(ws, [r.__class__(r.stage, r.key, r.dir, r.label, skipped=True) for r in refs])
    assert totals == {"eval_comparisons": len(before) + merged}  # nothing re-ingested, both tables recomputed
    pandas.testing.assert_frame_equal(store.query("SELECT * FROM eval_comparisons ORDER BY ALL"), before)
    assert not store.comparisons_stale()


def test_a_second_parameter_and_test_points_join_the_sweep(first_run):
    """merge.sweep_params adds RobustMerge's keep to its scale grid; merge.test_points scores every point on test
    too, without taking part in the pick; another method's merge key does not move. (Last in the module: its
    extra robustmerge run would be the newest one the status tests compare against.)"""
    from pipeline import merge as merge_stage
    from pipeline.ingest import ingest

    cfg, ws, result = first_run
    merge = cfg.merge.model_copy(update={"sweep_params": {"robustmerge": {"keep": [0.5, 1.0]}}, "test_points": True})
    swept = cfg.model_copy(update={"merge": merge})
    upstream = dict(model=result.model, data=result.data, curate=result.curate, experts=list(result.experts))
    out = merge_stage.run(swept, ws, **upstream, method="robustmerge")
    other = cfg.model_copy(update={"merge": cfg.merge.model_copy(update={"sweep_params": merge.sweep_params})})
    assert not out.skipped and merge_stage.run(other, ws, **upstream, method="task-arithmetic").skipped
    ingest(ws, out)
    store = Store(ws.db_path)
    rows = store.query(f"SELECT * FROM merge_sweep WHERE run_key = '{out.key}'")
    assert set(rows.param) == {"keep"} and set(rows.param_value) == {0.5, 1.0}
    for split in ("validation", "test"):
        part = rows[rows.split == split]
        assert len(part) == 2 * len(cfg.merge.scales) * 3  # keep values x scales x domains
    test = rows[rows.split == "test"]
    assert not test.chosen.any() and set(test.n_problems) == {cfg.evaluate.max_problems_per_benchmark}
    chosen = rows[rows.chosen]
    assert len(chosen) == 3 and chosen[["scale", "param_value"]].drop_duplicates().shape == (1, 2)
    validation = rows[rows.split == "validation"].groupby(["param_value", "scale"]).accuracy.mean()
    assert validation.loc[(chosen.param_value.iloc[0], chosen.scale.iloc[0])] == validation.max()
    params = json.loads(store.query(f"SELECT params FROM merge_runs WHERE run_key = '{out.key}'").params[0])
    assert params["keep"] == chosen.param_value.iloc[0] and out.manifest()["summary"]["swept"] == {
        "keep": chosen.param_value.iloc[0]}


@pytest.mark.parametrize("profile", ["demo", "smollm", "gpu-math"])
def test_the_flow_submits_exactly_the_jobs_the_plan_lists(prefect_harness, profile, tmp_path, monkeypatch):
    """One expansion of the stage graph: the flows and ``polymath status`` walk the same jobs in the same order."""
    import flows.stage_flows as stage_flows
    from pipeline.plan import plan_runs
    from pipeline.stage import planned

    ws = Workspace(tmp_path)
    submitted = []

    def plan_instead(step, jobs, ws, execution):  # each job stops at its key: nothing runs, nothing is written
        for job in jobs:
            ref = planned(lambda: job.run(ws))
            submitted.append((ref.stage, ref.label, ref.key))
            yield ref

    monkeypatch.setattr(stage_flows, "_run_all", plan_instead)
    monkeypatch.setattr(stage_flows, "ingest_task", lambda ws, refs: None)
    monkeypatch.setattr(stage_flows, "AFTER_STEP", {})
    monkeypatch.setattr(stage_flows.artifacts, "accuracy", lambda *a, **k: None)
    cfg = load_config(profile)
    pipeline(cfg, str(ws.root))
    expected = [(r.stage, r.label, r.key) for r in plan_runs(cfg, ws)]
    assert submitted == expected and {s for s, _, _ in expected} == {"data", "curate", "model", "train", "evaluate",
                                                                      "merge"}
