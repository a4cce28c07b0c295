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
from experiments.entropy import ARM_NAMES, ARMS, BASELINE, EntropyExperiment, experiment_plan
from experiments.entropy_stats import paired_difference
from experiments.entropy_verdicts import (
    Results,
    verdict_collapse,
    verdict_data,
    verdict_offpolicy,
    verdict_positive_tokens,
    verdict_regularization,
    verdict_remedies,
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
    plan = experiment_plan(cfg, EntropyExperiment(seeds=[3], domain="reverse", k=8, arms=list(ARM_NAMES)))
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
    assert set(plan.data_configs) == {"kmeans", "random", "one-cluster", "full"}
    assert plan.data_configs["full"] is None
    assert plan.data_configs["one-cluster"].curate.strategy == "few-clusters"
    # every arm is also evaluated on a domain it never trains on; the default run is five seeds of the default arms
    assert base["evaluate.domains"] == ["reverse", "arithmetic"] and base["train.steps"] == 100
    default = EntropyExperiment()
    assert default.seeds == [0, 1, 2, 3, 4] and "par-0" not in ARM_NAMES and "clip-higher" not in default.arms


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


def _results(arms: dict[str, dict[str, list[float]]]) -> Results:
    """Per-seed rows from {arm: {column: [value per seed]}}."""
    rows = []
    for arm, cols in arms.items():
        n = len(next(iter(cols.values())))
        for seed in range(n):
            rows.append({"arm": arm, "seed": seed, **{c: v[seed] for c, v in cols.items()}})
    return Results(pd.DataFrame(rows))


def test_paired_interval_is_the_t_interval_of_the_per_seed_differences():
    frame = pd.DataFrame({"arm": ["a"] * 5 + ["b"] * 5, "seed": list(range(5)) * 2,
                          "x": [0.50, 0.52, 0.47, 0.55, 0.51, 0.40, 0.45, 0.41, 0.44, 0.40]})
    d = paired_difference(frame, "a", "b", "x")
    diffs = np.array([0.10, 0.07, 0.06, 0.11, 0.11])
    half = 2.7764451051977987 * diffs.std(ddof=1) / math.sqrt(5)  # t(0.975, 4)
    assert d.n == 5 and d.mean == pytest.approx(diffs.mean())
    assert (d.low, d.high) == pytest.approx((diffs.mean() - half, diffs.mean() + half))
    # pairing matters: the seeds' shared offsets cancel, an unpaired 2-SE rule would not see them cancel
    assert d.sign == 1
    # a base row is one number: the arm's one-sample interval, shifted
    base = pd.DataFrame({"arm": ["a"] * 5 + ["base"], "seed": list(range(5)) + [0], "x": [0.5, 0.52, 0.47, 0.55, 0.51, 0.3]})
    assert paired_difference(base, "a", "base", "x", constant={"base"}).mean == pytest.approx(0.51 - 0.3)


def test_a_true_effect_holds_no_effect_is_inconclusive_one_seed_decides_nothing():
    rng = np.random.default_rng(0)
    grpo = list(0.5 + rng.normal(0, 0.02, 5))
    effect = _results({"grpo": {"entropy_ratio": grpo}, "adv-nonpos": {"entropy_ratio": [g + 0.2 for g in grpo]}})
    assert verdict_positive_tokens(effect).word == "holds"
    noise = _results({"grpo": {"entropy_ratio": grpo},
                      "adv-nonpos": {"entropy_ratio": [g + e for g, e in zip(grpo, [0.03, -0.04, 0.02, -0.01, 0.01])]}})
    v = verdict_positive_tokens(noise)
    assert v.word == "inconclusive" and v.checks[0].word == "inconclusive"
    assert v.checks[0].diff.low < 0 < v.checks[0].diff.high
    wrong_way = _results({"grpo": {"entropy_ratio": grpo}, "adv-nonpos": {"entropy_ratio": [g - 0.2 for g in grpo]}})
    assert verdict_positive_tokens(wrong_way).word == "does not hold"
    one = _results({"grpo": {"entropy_ratio": [0.5]}, "adv-nonpos": {"entropy_ratio": [0.9]}})
    v = verdict_positive_tokens(one)
    assert v.word == "inconclusive" and "no interval" in v.checks[0].row()["difference"]


def test_collapse_needs_entropy_to_fall_beyond_its_interval():
    falls = {"entropy_initial": [0.6, 0.62, 0.58], "entropy_final": [0.3, 0.33, 0.28],
             "entropy_ratio": [0.5, 0.53, 0.48]}
    assert verdict_collapse(_results({"grpo": falls})).word == "holds"
    flat = {"entropy_initial": [0.6, 0.62, 0.58], "entropy_final": [0.61, 0.60, 0.59], "entropy_ratio": [1.0] * 3}
    assert verdict_collapse(_results({"grpo": flat})).word == "inconclusive"
    assert verdict_collapse(Results(pd.DataFrame(columns=["arm", "seed"]))).word == "not run"


def test_a_controller_that_never_acted_is_called_so_and_q2_compares_with_grpo():
    grpo = {"entropy_final": [0.10, 0.11, 0.10, 0.12, 0.10], "heldout_accuracy": [0.60, 0.62, 0.61, 0.60, 0.63],
            "coef_acting": [0.0] * 5, "coef_mean": [0.0] * 5, "entropy_target": [math.nan] * 5}
    acting = {"entropy_final": [0.14, 0.15, 0.14, 0.15, 0.15], "entropy_target": [0.15] * 5,
              "heldout_accuracy": [0.64, 0.67, 0.65, 0.64, 0.68], "coef_acting": [0.8] * 5, "coef_mean": [0.2] * 5}
    assert verdict_regularization(_results({"grpo": grpo, "entropy-adaptive": acting})).word == "holds"
    # entropy above its target all along: the bonus never applied; the question says "did not act"
    idle = {**acting, "coef_acting": [0.05] * 5, "coef_mean": [0.001] * 5}
    v = verdict_regularization(_results({"grpo": grpo, "entropy-adaptive": idle}))
    assert v.word == "did not act" and "5% of steps" in v.checks[0].claim
    # accuracy above the base but level with GRPO: no longer "rises"
    level = {**acting, "heldout_accuracy": [0.61, 0.61, 0.62, 0.60, 0.63]}
    assert verdict_regularization(_results({"grpo": grpo, "entropy-adaptive": level})).word.startswith("partly")


def test_matches_needs_the_interval_inside_its_margin_and_offpolicy_reads_the_ood_column():
    acc = [0.60, 0.62, 0.58, 0.61, 0.60]
    full = {"heldout_accuracy": [a + 0.005 for a in acc], "entropy_ratio": [0.5] * 5}
    small = {"heldout_accuracy": acc, "entropy_ratio": [0.5] * 5}
    assert verdict_data(_results({"grpo": small, "data-full": full})).word == "holds"
    wide = {"heldout_accuracy": [a + e for a, e in zip(acc, [0.06, -0.05, 0.07, -0.06, 0.0])], "entropy_ratio": [0.5] * 5}
    assert verdict_data(_results({"grpo": small, "data-full": wide})).word == "inconclusive"
    grpo = {"reward_final": [0.5, 0.52, 0.49, 0.51, 0.5], "heldout_accuracy": acc, "ood_accuracy": acc}
    off = {"reward_final": [0.6, 0.63, 0.58, 0.62, 0.6], "heldout_accuracy": acc,
           "ood_accuracy": [a + 0.05 for a in acc]}
    v = verdict_offpolicy(_results({"grpo": grpo, "offpolicy-4": off}))
    assert [c.word for c in v.checks] == ["holds", "holds", "does not hold"] and v.word == "partly"


def test_remedy_verdict_needs_higher_entropy_at_no_cost_in_accuracy():
    def arm(entropy, acc):
        return {"entropy_final": [entropy + e for e in (0.0, 0.01, -0.01)], "heldout_accuracy": [acc + e for e in (0.0, 0.004, -0.004)]}
    r = {"grpo": arm(0.20, 0.60), "offpolicy-4": arm(0.30, 0.60), "clip-cov": arm(0.40, 0.605), "kl-cov": arm(0.35, 0.60)}
    v = verdict_remedies(_results(r))
    assert v.word == "holds" and "kl-cov ends at 0.350 ± 0.010 nats (offpolicy-4: 0.300" in v.text
    r["w-reinforce"] = arm(0.50, 0.50)  # entropy kept, accuracy lost
    assert verdict_remedies(_results(r)).word == "partly"
    assert verdict_remedies(_results({"grpo": arm(0.2, 0.6)})).word == "not run"


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
    from experiments.entropy import ArmJob, longest_first
    from pipeline.graph import Job, Runs

    cfg = load_config("demo")
    plan = experiment_plan(cfg, EntropyExperiment(seeds=[0], arms=["adv-nonneg", "offpolicy-2", "clip-higher"]))
    jobs = [ArmJob(Job("train", run.label, run.cfg), Runs()) for run in plan.runs]
    order = [plan.runs[i].arm.name for i in longest_first(jobs)]
    assert order == ["clip-higher", "offpolicy-2", "grpo", "adv-nonneg"]


def test_spearman_verdict_calls_small_correlations_weak():
    frame = pd.DataFrame([{"arm": "grpo", "seeds": 2, "spearman": -0.1, "spearman_min": -0.2, "spearman_max": 0.0}])
    v = verdict_spearman(frame)
    assert v.word == "holds" and "weak negative" in v.text
    frame.loc[0, "spearman"] = -0.7
    assert verdict_spearman(frame).word == "does not hold"


# ---------- end to end on the micro profile ----------


MICRO_ARMS = ["adv-nonneg", "par-entropy-guided", "offpolicy-2", "data-full", "data-one-cluster"]


@pytest.fixture(scope="module")
def micro_experiment(prefect_harness, micro_config_path, tmp_path_factory):
    from flows.experiment import entropy_experiment_flow

    ws = Workspace(tmp_path_factory.mktemp("ws"))
    cfg = load_config(micro_config_path)
    experiment = EntropyExperiment(seeds=[0], arms=MICRO_ARMS, domain="reverse", ood_domain="gcd", k=8, steps=2)
    path = entropy_experiment_flow(cfg, str(ws.root), experiment)
    return cfg, ws, experiment, path


def test_experiment_writes_arms_and_a_report_from_queries(micro_experiment):
    _, ws, _, path = micro_experiment
    store = Store(ws.db_path)
    arms = store.query("SELECT arm, data, curate_run, train_run, eval_run FROM experiment_arms ORDER BY arm")
    assert list(arms["arm"]) == ["adv-nonneg", "base", "base@greedy", "data-full", "data-one-cluster", "grpo",
                                 "offpolicy-2", "par-entropy-guided"]
    assert pd.isna(arms.set_index("arm").loc["data-full", "curate_run"])
    picked = store.query(
        "SELECT DISTINCT s.domain FROM curation_selection s JOIN experiment_arms a ON s.run_key = a.curate_run"
    )
    assert list(picked["domain"]) == ["reverse"]
    # every evaluation samples the training domain's test split and the out-of-domain one, nothing else
    sampled = store.query("SELECT DISTINCT benchmark FROM eval_samples s JOIN experiment_arms a ON s.eval_run = a.eval_run")
    assert sorted(sampled["benchmark"]) == ["gcd", "reverse"]
    results = store.query("SELECT * FROM experiment_results WHERE arm NOT IN ('base', 'base@greedy')")
    assert results[["entropy_final", "reward_final", "heldout_accuracy", "ood_accuracy",
                    "reference_entropy_other"]].notna().all().all()
    # entropy-guided PAR's threshold is a fraction of the run's own initial entropy, measured before training
    guided = results.set_index("arm").loc["par-entropy-guided"]
    assert 0 < guided.par_threshold and results.set_index("arm").par_threshold.drop("par-entropy-guided").isna().all()
    assert guided.lambda_mean is not None and 0 <= guided.lambda_acting <= 1
    greedy = store.query("SELECT heldout_accuracy, entropy_final FROM experiment_results WHERE arm = 'base@greedy'")
    assert greedy.heldout_accuracy.notna().all() and greedy.entropy_final.isna().all()
    text = open(path).read()
    for q in range(1, 9):
        assert f"### Q{q}." in text
    assert "### Q5. Does clip-higher keep entropy higher than a symmetric clip? **not run**" in text
    # every verdict prints its claims with their intervals and rules; the arms left out say why
    assert "Claims, each a paired difference over seeds" in text and "n = 1: no interval" in text
    assert "| par-0 | 3 | removed: the loss of adv-nonpos" in text
    assert "What the controllers applied" in text and "Entropy on fixed contexts" in text
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
    assert (ws.reports_dir / "entropy" / "controllers.png").stat().st_size > 0


def test_experiment_rerun_reuses_every_stage_run(micro_experiment):
    from flows.experiment import entropy_experiment_flow

    cfg, ws, experiment, _ = micro_experiment
    before = {p: p.stat().st_mtime for p in (ws.root / "artifacts").glob("*/*/manifest.json")}
    entropy_experiment_flow(cfg, str(ws.root), experiment)
    after = {p: p.stat().st_mtime for p in (ws.root / "artifacts").glob("*/*/manifest.json")}
    assert after == before
    rows = Store(ws.db_path).query("SELECT count(*) AS n FROM experiment_arms")
    assert int(rows["n"][0]) == 8
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
        arms=MICRO_ARMS, domain="reverse", ood_domain="gcd", k=8, steps=2,
    )
    assert out == path and sorted((ws.root / "artifacts").glob("*/*/manifest.json")) == before


def test_the_plain_runner_needs_no_prefect_and_reuses_the_flow_runs(micro_experiment):
    from experiments.entropy import run_experiment

    cfg, ws, experiment, _ = micro_experiment
    before = sorted((ws.root / "artifacts").glob("*/*/manifest.json"))
    rows = run_experiment(experiment_plan(cfg, experiment), ws)  # stage functions, no flow or task
    assert sorted((ws.root / "artifacts").glob("*/*/manifest.json")) == before
    assert sorted(rows["arm"]) == ["adv-nonneg", "base", "base@greedy", "data-full", "data-one-cluster", "grpo",
                                   "offpolicy-2", "par-entropy-guided"]
    stored = Store(ws.db_path).query("SELECT arm, train_run FROM experiment_arms ORDER BY arm")
    assert dict(zip(stored["arm"], stored["train_run"].fillna(""))) == dict(
        zip(rows.sort_values("arm")["arm"], rows.sort_values("arm")["train_run"].fillna(""))
    )


def test_two_workers_run_the_arms_side_by_side(prefect_harness, micro_config_path, tmp_path):
    from flows.experiment import entropy_experiment_flow

    cfg = load_config(micro_config_path, ["workers=2"])
    experiment = EntropyExperiment(seeds=[0, 1], arms=["adv-nonneg"], domain="reverse", k=8, steps=2)
    entropy_experiment_flow(cfg, str(tmp_path), experiment)
    rows = Store(Workspace(tmp_path).db_path).query(
        "SELECT arm, seed, train_run, heldout_accuracy FROM experiment_results WHERE train_run IS NOT NULL ORDER BY ALL")
    assert rows[["arm", "seed"]].values.tolist() == [["adv-nonneg", 0], ["adv-nonneg", 1], ["grpo", 0], ["grpo", 1]]
    assert rows.train_run.nunique() == 4 and rows.heldout_accuracy.notna().all()
