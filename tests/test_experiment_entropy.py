"""The entropy experiment: its plan, its results view, its verdicts, and a micro run end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from evaluation.store import Store
from experiments.entropy import ARMS, BASELINE, EntropyExperiment, experiment_plan
from experiments.entropy_verdicts import (
    Summary,
    verdict_collapse,
    verdict_data,
    verdict_offpolicy,
    verdict_positive_tokens,
    verdict_spearman,
)
from flows.cli import app
from pipeline.config import load_config
from polymath.workspace import Workspace


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# ---------- the plan ----------


def test_every_arm_is_the_baseline_with_only_its_own_changes(micro_config_path):
    # 4 x 2 completions per batch: every arm's updates per batch divide it (offpolicy-16 takes 8 eighths)
    cfg = load_config(micro_config_path, ["train.prompts_per_step=4"])
    plan = experiment_plan(cfg, EntropyExperiment(seeds=[3], domain="reverse", k=8))
    base = _flatten(plan.base.model_dump(mode="json"))
    for key, value in BASELINE.items():
        assert base[key] == value
    assert base["curate.domains"] == ["reverse"] and base["curate.k"] == 8
    assert [r.arm.name for r in plan.runs] == [a.name for a in ARMS]
    for run in plan.runs:
        arm = _flatten(run.cfg.model_dump(mode="json"))
        declared = {**run.arm.changes, "train.seed": 3}
        changed = {k for k, v in arm.items() if base.get(k) != v}
        assert changed <= set(declared), run.arm.name
        assert {k: arm[k] for k in declared} == declared, run.arm.name
    assert set(plan.data_configs) == {"kmeans", "random", "few-clusters", "full"}
    assert plan.data_configs["full"] is None
    assert plan.data_configs["few-clusters"].curate.strategy == "few-clusters"


def test_grpo_always_runs_and_unknown_arms_are_named():
    assert EntropyExperiment(arms=["clip-higher"]).arms == ["grpo", "clip-higher"]
    with pytest.raises(ValidationError, match="unknown arms \\['nope'\\]; choose from: grpo"):
        EntropyExperiment(arms=["nope"])
    with pytest.raises(ValidationError, match="repeat a seed"):
        EntropyExperiment(seeds=[1, 1])


def test_cli_rejects_bad_arms_and_seeds(tmp_path):
    runner = CliRunner()
    out = runner.invoke(app, ["experiment", "entropy", "--arms", "grpo,nope", "-w", str(tmp_path)])
    assert out.exit_code == 2 and "unknown arms ['nope']" in out.output
    out = runner.invoke(app, ["experiment", "entropy", "--seeds", "0,x", "-w", str(tmp_path)])
    assert out.exit_code == 2 and "--seeds '0,x': expected integers" in out.output


# ---------- the experiment_results view ----------


def test_experiment_results_view_matches_a_direct_computation(tmp_path):
    store = Store(tmp_path / "polymath.duckdb")
    rng = np.random.default_rng(0)
    steps = []
    for run in ("t1", "t2"):
        for step in range(1, 21):
            for metric in ("entropy", "reward", "entropy_target"):
                steps.append((run, "gcd", step, metric, float(rng.random())))
    frame = pd.DataFrame(steps, columns=["run_key", "expert", "step", "metric", "value"])
    for run in ("t1", "t2"):
        store.replace("train_steps", frame[frame.run_key == run].reset_index(drop=True), {"run_key": run})
    samples = []
    for run in ("e1", "e2"):
        for bench in ("gcd", "legs"):
            for pid in range(3):
                for idx in range(4):
                    samples.append({
                        "eval_run": run, "model_label": run, "benchmark": bench, "problem_id": f"p{pid}",
                        "sample_idx": idx, "completion": "x", "extracted_answer": "1", "score": 0.0,
                        "correct": bool(rng.random() < 0.5), "n_tokens": 2, "no_answer": False, "hit_cap": False,
                        "mean_entropy": float(rng.random()), "sum_logprob": -1.0, "n_bigrams": 0, "new_bigrams": 0,
                    })
    samples = pd.DataFrame(samples)
    for run in ("e1", "e2"):
        store.replace("eval_samples", samples[samples.eval_run == run].reset_index(drop=True), {"eval_run": run})
    arms = pd.DataFrame([
        {"experiment": "entropy", "arm": "grpo", "question": 1, "seed": s, "data": "kmeans", "domain": "gcd",
         "changes": "{}", "label": f"l{s}", "curate_run": "c", "train_run": t, "eval_run": e}
        for s, t, e in ((0, "t1", "e1"), (1, "t2", "e2"))
    ])
    store.replace("experiment_arms", arms, {"experiment": "entropy", "arm": "grpo"})

    got = store.query("SELECT * FROM experiment_results ORDER BY seed")
    for row, (t, e) in zip(got.itertuples(), (("t1", "e1"), ("t2", "e2"))):
        wide = frame[frame.run_key == t].pivot(index="step", columns="metric", values="value")
        assert row.n_steps == 20
        assert row.entropy_initial == pytest.approx(wide.loc[1:2, "entropy"].mean())
        assert row.entropy_final == pytest.approx(wide.loc[17:20, "entropy"].mean())
        assert row.entropy_ratio == pytest.approx(row.entropy_final / row.entropy_initial)
        assert row.entropy_target == pytest.approx(wide.loc[17:20, "entropy_target"].mean())
        assert row.reward_initial == pytest.approx(wide.loc[1:2, "reward"].mean())
        assert row.reward_final == pytest.approx(wide.loc[17:20, "reward"].mean())
        held = samples[(samples.eval_run == e) & (samples.benchmark == "gcd")]
        assert row.heldout_accuracy == pytest.approx(held.groupby("problem_id")["correct"].mean().mean())
        assert row.heldout_entropy == pytest.approx(held.groupby("problem_id")["mean_entropy"].mean().mean())


# ---------- verdicts ----------


def _summary(rows: list[dict]) -> Summary:
    return Summary(pd.DataFrame(rows))


def test_collapse_verdict_follows_the_entropy_ratio():
    def row(ratio):
        return {"arm": "grpo", "seeds": 3, "entropy_initial": 0.6, "entropy_final": 0.6 * ratio, "entropy_ratio": ratio,
                "entropy_ratio_sd": 0.01, "heldout_entropy": 0.3, "heldout_entropy_sd": 0.01}
    assert verdict_collapse(_summary([row(0.3)]))[0] == "holds"
    assert verdict_collapse(_summary([row(0.7)]))[0] == "partly"
    assert verdict_collapse(_summary([row(1.0)]))[0] == "does not hold"
    assert verdict_collapse(_summary([]))[0] == "not run"


def test_differences_within_twice_the_standard_error_do_not_count():
    rows = [
        {"arm": "grpo", "seeds": 4, "reward_final": 0.50, "reward_final_sd": 0.04,
         "heldout_accuracy": 0.60, "heldout_accuracy_sd": 0.02, "entropy_ratio": 0.5, "entropy_ratio_sd": 0.05},
        # +0.05 reward against 2 SE = 2 * sqrt(2 * 0.04^2 / 4) = 0.057: level
        {"arm": "offpolicy-2", "seeds": 4, "reward_final": 0.55, "reward_final_sd": 0.04,
         "heldout_accuracy": 0.60, "heldout_accuracy_sd": 0.02, "entropy_ratio": 0.5, "entropy_ratio_sd": 0.05},
        # +0.10 reward: higher; accuracy -0.05: lower
        {"arm": "offpolicy-4", "seeds": 4, "reward_final": 0.60, "reward_final_sd": 0.04,
         "heldout_accuracy": 0.55, "heldout_accuracy_sd": 0.02, "entropy_ratio": 0.5, "entropy_ratio_sd": 0.05},
    ]
    s = _summary(rows)
    assert s.compare("offpolicy-2", "grpo", "reward_final") == 0
    assert s.compare("offpolicy-4", "grpo", "reward_final") == 1
    assert s.compare("offpolicy-4", "grpo", "heldout_accuracy") == -1
    word, text = verdict_offpolicy(s)
    assert word == "partly" and "offpolicy-4: final training reward 0.600 ± 0.040" in text
    rows[1]["reward_final"] = 0.65
    assert verdict_offpolicy(_summary(rows))[0] == "holds"


def test_a_column_without_a_seed_spread_compares_by_its_raw_difference():
    s = _summary([{"arm": "grpo", "seeds": 3, "entropy_final": 0.30}, {"arm": "clip-higher", "seeds": 3, "entropy_final": 0.31}])
    assert math.isnan(s.noise("clip-higher", "grpo", "entropy_final"))
    assert s.compare("clip-higher", "grpo", "entropy_final") == 1


def test_low_diversity_must_collapse_faster_than_every_diverse_subset():
    def row(arm, ratio, acc=0.7):
        return {"arm": arm, "seeds": 3, "entropy_ratio": ratio, "entropy_ratio_sd": 0.01,
                "heldout_accuracy": acc, "heldout_accuracy_sd": 0.01}
    rows = [row("grpo", 0.45), row("data-full", 0.40), row("data-random", 0.44), row("data-few-clusters", 0.30)]
    assert verdict_data(_summary(rows))[0] == "holds"
    rows[2] = row("data-random", 0.30)  # random collapses as fast as the narrow subset
    assert verdict_data(_summary(rows))[0] == "partly"


def test_positive_token_verdict_needs_every_ordering():
    base = {"seeds": 2, "entropy_ratio_sd": 0.01, "heldout_accuracy": 0.5, "heldout_accuracy_sd": 0.01}
    rows = [{"arm": "grpo", "entropy_ratio": 0.5, **base}, {"arm": "adv-nonneg", "entropy_ratio": 0.1, **base},
            {"arm": "adv-nonpos", "entropy_ratio": 1.2, **base}, {"arm": "par-0", "entropy_ratio": 0.9, **base}]
    assert verdict_positive_tokens(_summary(rows))[0] == "holds"
    rows[3]["entropy_ratio"] = 0.3  # lambda = 0 collapsing faster than lambda = 1 breaks the claim
    assert verdict_positive_tokens(_summary(rows))[0] == "partly"


def test_remedy_verdict_needs_higher_entropy_at_no_cost_in_accuracy():
    from experiments.entropy_verdicts import verdict_remedies

    def row(arm, entropy, acc):
        return {"arm": arm, "seeds": 3, "entropy_final": entropy, "entropy_final_sd": 0.01,
                "heldout_accuracy": acc, "heldout_accuracy_sd": 0.01}
    rows = [row("grpo", 0.20, 0.60), row("offpolicy-4", 0.30, 0.60), row("clip-cov", 0.40, 0.61),
            row("kl-cov", 0.35, 0.60)]
    word, text = verdict_remedies(_summary(rows))
    assert word == "holds" and "clip-cov ends at 0.400 ± 0.010 nats (above grpo's 0.200" in text
    # KL-Cov acts only off-policy: it is judged against the arm with its 4 updates per batch
    assert "kl-cov ends at 0.350 ± 0.010 nats (above offpolicy-4's 0.300" in text
    rows[1]["entropy_final"] = 0.36
    assert verdict_remedies(_summary(rows))[0] == "partly"
    rows.append(row("w-reinforce", 0.50, 0.50))  # entropy kept, accuracy lost
    assert verdict_remedies(_summary(rows))[0] == "partly"
    assert verdict_remedies(_summary([row("grpo", 0.2, 0.6)]))[0] == "not run"


def test_every_reference_arm_exists_and_shares_the_update_schedule():
    from experiments.entropy import ARMS, BASELINE, REFERENCE

    schedule = ("train.updates_per_batch", "train.num_iterations")
    changes = {a.name: {**BASELINE, **a.changes} for a in ARMS}
    for arm in ARMS:
        assert arm.reference in REFERENCE, arm.name
        if arm.question == 4:  # the off-policy arms are the schedule change itself, against plain GRPO
            continue
        assert [changes[arm.name][k] for k in schedule] == [changes[arm.reference][k] for k in schedule], arm.name


def test_side_by_side_arms_start_with_the_most_updates_per_rollout_batch():
    from experiments.entropy import longest_first

    cfg = load_config("demo")
    plan = experiment_plan(cfg, EntropyExperiment(seeds=[0], arms=["adv-nonneg", "offpolicy-2", "clip-higher"]))
    jobs = [(run.cfg,) for run in plan.runs]
    order = [plan.runs[i].arm.name for i in longest_first(jobs)]
    assert order == ["clip-higher", "offpolicy-2", "grpo", "adv-nonneg"]


def test_spearman_verdict_calls_small_correlations_weak():
    frame = pd.DataFrame([{"arm": "grpo", "seeds": 2, "spearman": -0.1, "spearman_min": -0.2, "spearman_max": 0.0}])
    word, text = verdict_spearman(frame)
    assert word == "holds" and "weak negative" in text
    frame.loc[0, "spearman"] = -0.7
    assert verdict_spearman(frame)[0] == "does not hold"


# ---------- end to end on the micro profile ----------


@pytest.fixture(scope="module")
def micro_experiment(prefect_harness, micro_config_path, tmp_path_factory):
    from flows.experiment import entropy_experiment_flow

    ws = Workspace(tmp_path_factory.mktemp("ws"))
    cfg = load_config(micro_config_path)
    experiment = EntropyExperiment(seeds=[0], arms=["adv-nonneg", "offpolicy-2", "data-full", "data-few-clusters"],
                                   domain="reverse", k=8)
    path = entropy_experiment_flow(cfg, str(ws.root), experiment)
    return cfg, ws, experiment, path


def test_experiment_writes_arms_and_a_report_from_queries(micro_experiment):
    _, ws, _, path = micro_experiment
    store = Store(ws.db_path)
    arms = store.query("SELECT arm, data, curate_run, train_run, eval_run FROM experiment_arms ORDER BY arm")
    assert list(arms["arm"]) == ["adv-nonneg", "base", "base@greedy", "data-few-clusters", "data-full", "grpo",
                                 "offpolicy-2"]
    assert pd.isna(arms.set_index("arm").loc["data-full", "curate_run"])
    picked = store.query(
        "SELECT DISTINCT s.domain FROM curation_selection s JOIN experiment_arms a ON s.run_key = a.curate_run"
    )
    assert list(picked["domain"]) == ["reverse"]
    # every evaluation of the experiment samples its training domain's test split alone (evaluate.domains)
    sampled = store.query("SELECT DISTINCT benchmark FROM eval_samples s JOIN experiment_arms a ON s.eval_run = a.eval_run")
    assert list(sampled["benchmark"]) == ["reverse"]
    results = store.query("SELECT * FROM experiment_results WHERE arm NOT IN ('base', 'base@greedy')")
    assert results[["entropy_final", "reward_final", "heldout_accuracy"]].notna().all().all()
    greedy = store.query("SELECT heldout_accuracy, entropy_final FROM experiment_results WHERE arm = 'base@greedy'")
    assert greedy.heldout_accuracy.notna().all() and greedy.entropy_final.isna().all()
    text = open(path).read()
    for q in range(1, 9):
        assert f"### Q{q}." in text
    assert "### Q5. Does clip-higher keep entropy higher than a symmetric clip? **not run**" in text
    # Q3's covariance split: the two advantage signs' shares add up to the covariance, per arm
    assert "split by the sign of the advantage" in text
    split = store.query("SELECT run_key, step, metric, value FROM train_steps WHERE metric LIKE 'logp_adv_cov%'")
    wide = split.pivot_table(index=["run_key", "step"], columns="metric", values="value").dropna()
    assert len(wide) and ((wide.logp_adv_cov_pos + wide.logp_adv_cov_neg - wide.logp_adv_cov).abs() < 1e-9).all()
    # equal data: the off-policy arm takes 2 optimizer steps per rollout batch over as many batches as GRPO
    batches = store.query(
        "SELECT a.arm, count(*) AS steps, max(t.value) AS rollout_batches FROM experiment_arms a "
        "JOIN train_steps t ON t.run_key = a.train_run AND t.metric = 'rollout_batches' GROUP BY a.arm"
    ).set_index("arm")
    assert batches.loc["offpolicy-2", "rollout_batches"] == batches.loc["grpo", "rollout_batches"] == 2
    assert batches.loc["offpolicy-2", "steps"] == 2 * batches.loc["grpo", "steps"]
    assert text.count("```sql") >= 4
    assert (ws.reports_dir / "entropy" / "entropy_curves.png").stat().st_size > 0


def test_experiment_rerun_reuses_every_stage_run(micro_experiment):
    from flows.experiment import entropy_experiment_flow

    cfg, ws, experiment, _ = micro_experiment
    before = {p: p.stat().st_mtime for p in (ws.root / "artifacts").glob("*/*/manifest.json")}
    entropy_experiment_flow(cfg, str(ws.root), experiment)
    after = {p: p.stat().st_mtime for p in (ws.root / "artifacts").glob("*/*/manifest.json")}
    assert after == before
    rows = Store(ws.db_path).query("SELECT count(*) AS n FROM experiment_arms")
    assert int(rows["n"][0]) == 7
    assert json.loads(
        Store(ws.db_path).query("SELECT changes FROM experiment_arms WHERE arm = 'adv-nonneg'")["changes"][0]
    ) == {"train.token_filter": "nonneg"}


def test_deployment_entry_point_runs_the_experiment_by_profile_name(micro_experiment, micro_config_path,
                                                                     monkeypatch):
    from flows.deployments import run_entropy_experiment

    _, ws, experiment, path = micro_experiment
    monkeypatch.setenv("POLYMATH_PROFILES", str(micro_config_path.parent))
    monkeypatch.setenv("POLYMATH_DEPLOY_ROOT", str(ws.root.parent))
    before = sorted((ws.root / "artifacts").glob("*/*/manifest.json"))
    out = run_entropy_experiment(
        config=micro_config_path.stem, workspace=ws.root.name, seeds=[0],
        arms=["adv-nonneg", "offpolicy-2", "data-full", "data-few-clusters"], domain="reverse", k=8,
    )
    assert out == path and sorted((ws.root / "artifacts").glob("*/*/manifest.json")) == before


def test_the_plain_runner_needs_no_prefect_and_reuses_the_flow_runs(micro_experiment):
    from experiments.entropy import run_experiment

    cfg, ws, experiment, _ = micro_experiment
    before = sorted((ws.root / "artifacts").glob("*/*/manifest.json"))
    rows = run_experiment(experiment_plan(cfg, experiment), ws)  # stage functions, no flow or task
    assert sorted((ws.root / "artifacts").glob("*/*/manifest.json")) == before
    assert sorted(rows["arm"]) == ["adv-nonneg", "base", "base@greedy", "data-few-clusters", "data-full", "grpo",
                                   "offpolicy-2"]
    stored = Store(ws.db_path).query("SELECT arm, train_run FROM experiment_arms ORDER BY arm")
    assert dict(zip(stored["arm"], stored["train_run"].fillna(""))) == dict(
        zip(rows.sort_values("arm")["arm"], rows.sort_values("arm")["train_run"].fillna(""))
    )


def test_two_workers_run_the_arms_side_by_side(prefect_harness, micro_config_path, tmp_path):
    from flows.experiment import entropy_experiment_flow

    cfg = load_config(micro_config_path, ["workers=2"])
    experiment = EntropyExperiment(seeds=[0, 1], arms=["adv-nonneg"], domain="reverse", k=8)
    entropy_experiment_flow(cfg, str(tmp_path), experiment)
    rows = Store(Workspace(tmp_path).db_path).query(
        "SELECT arm, seed, train_run, heldout_accuracy FROM experiment_results WHERE train_run IS NOT NULL ORDER BY ALL")
    assert rows[["arm", "seed"]].values.tolist() == [["adv-nonneg", 0], ["adv-nonneg", 1], ["grpo", 0], ["grpo", 1]]
    assert rows.train_run.nunique() == 4 and rows.heldout_accuracy.notna().all()
