"""The results database's tables: their columns, types and descriptions (the SQL that derives views from
them is :mod:`evaluation.views`).

Plain data only; ``evaluation.store`` is the module that runs it.
"""

from __future__ import annotations

from dataclasses import dataclass

PROBLEM_KEY = ("eval_run", "model_label", "benchmark", "problem_id")


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str
    description: str
    nullable: bool = True


@dataclass(frozen=True)
class TableSpec:
    description: str
    columns: tuple[Column, ...]
    derived: bool = False

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


def _c(name: str, sql_type: str, description: str, nullable: bool = True) -> Column:
    return Column(name, sql_type, description, nullable)


TABLES: dict[str, TableSpec] = {
    "runs": TableSpec(
        "one row per stage run: its key, config and timings",
        (
            _c("stage", "VARCHAR", "curate | train | evaluate | merge", False),
            _c("run_key", "VARCHAR", "content hash naming the artifact folder", False),
            _c("label", "VARCHAR", "human-readable name of the run"),
            _c("config", "VARCHAR", "the stage config as JSON text"),
            _c("status", "VARCHAR", "running | finished | failed | skipped"),
            _c("started_at", "TIMESTAMP", "start time, UTC"),
            _c("finished_at", "TIMESTAMP", "end time, UTC"),
            _c("seconds", "DOUBLE", "wall-clock duration"),
            _c("artifact_dir", "VARCHAR", "workspace/artifacts/<stage>/<key>"),
            _c("inputs", "VARCHAR", "the keys of the run's inputs (upstream runs, domain, label) as JSON text"),
        ),
    ),
    "curation_selection": TableSpec(
        "the prompts a curation run selected",
        (
            _c("run_key", "VARCHAR", "curation run", False),
            _c("problem_id", "VARCHAR", "selected problem", False),
            _c("domain", "VARCHAR", "problem domain"),
            _c("cluster", "INTEGER", "cluster the problem belongs to"),
            _c("rank", "INTEGER", "order in which the strategy picked it"),
        ),
    ),
    "curation_metrics": TableSpec(
        "diversity metrics of each selection (long format)",
        (
            _c("run_key", "VARCHAR", "curation run", False),
            _c("strategy", "VARCHAR", "selection strategy (random is the baseline)", False),
            _c("seed", "INTEGER", "selection seed"),
            _c("metric", "VARCHAR", "metric name, e.g. vendi_score; with the probe also learnability (mean "
               "p(1-p)) and zero_variance_frac (share of prompts with p in {0, 1})", False),
            _c("value", "DOUBLE", "metric value"),
        ),
    ),
    "curation_probe": TableSpec(
        "the learnability probe: the base model's pass rate on each candidate prompt (curate.probe_k samples)",
        (
            _c("run_key", "VARCHAR", "curation run", False),
            _c("problem_id", "VARCHAR", "candidate prompt", False),
            _c("k", "INTEGER", "completions sampled", False),
            _c("correct", "INTEGER", "of those, correct", False),
            _c("p", "DOUBLE", "pass rate correct / k; p(1-p) is the reward variance of its GRPO group", False),
        ),
    ),
    "train_steps": TableSpec(
        "per-step training metrics (long format; train_curves pivots them)",
        (
            _c("run_key", "VARCHAR", "training run", False),
            _c("expert", "VARCHAR", "domain of the LoRA expert", False),
            _c("step", "INTEGER", "optimizer step", False),
            _c("metric", "VARCHAR", "metric name: reward, accuracy, entropy, ...", False),
            _c("value", "DOUBLE", "metric value"),
        ),
    ),
    "eval_samples": TableSpec(
        "one row per sampled completion",
        (
            _c("eval_run", "VARCHAR", "evaluation run", False),
            _c("model_label", "VARCHAR", "base | expert:<domain> | merged:<method>", False),
            _c("benchmark", "VARCHAR", "benchmark name", False),
            _c("problem_id", "VARCHAR", "problem", False),
            _c("sample_idx", "INTEGER", "0..k-1 within the problem", False),
            _c("completion", "VARCHAR", "generated text, special tokens removed"),
            _c("extracted_answer", "VARCHAR", "answer the verifier extracted (NULL: none)"),
            _c("score", "DOUBLE", "verifier score in [0, 1]"),
            _c("correct", "BOOLEAN", "score >= the configured threshold", False),
            _c("n_tokens", "INTEGER", "generated tokens, EOS included, padding excluded"),
            _c("no_answer", "BOOLEAN", "the verifier found no answer in the completion (it scores 0)"),
            _c("hit_cap", "BOOLEAN", "generation stopped at the token cap (evaluate.max_new_tokens), not at EOS"),
            _c("mean_entropy", "DOUBLE", "mean per-token entropy of the sampling distribution (nats)"),
            _c("sum_logprob", "DOUBLE", "sum of log-probs of the sampled tokens under it"),
            _c("n_bigrams", "INTEGER", "word bigrams in the completion", False),
            _c("new_bigrams", "INTEGER", "of those, bigrams absent from the problem's earlier samples", False),
        ),
    ),
    "eval_reference_entropy": TableSpec(
        "teacher-forced entropy along each problem's reference solution (evaluate.reference_entropy)",
        (
            _c("eval_run", "VARCHAR", "evaluation run", False),
            _c("model_label", "VARCHAR", "base | expert:<domain> | merged:<method> | an experiment arm", False),
            _c("benchmark", "VARCHAR", "benchmark name", False),
            _c("problem_id", "VARCHAR", "problem", False),
            _c("kind", "VARCHAR", "digit: positions whose token is digits only; other: the rest", False),
            _c("tokens", "INTEGER", "positions of that kind in the solution", False),
            _c("entropy", "DOUBLE", "mean next-token entropy over them (nats)"),
        ),
    ),
    "merge_runs": TableSpec(
        "one row per merge of LoRA experts",
        (
            _c("run_key", "VARCHAR", "merge run", False),
            _c("method", "VARCHAR", "robustmerge | task-arithmetic | ties | dare | knots | ...", False),
            _c("label", "VARCHAR", "model label of the merge: merged:<method>[-without-<domain>]"),
            _c("params", "VARCHAR", "method parameters as JSON text"),
            _c("scale", "DOUBLE", "multiplier of the method's scale chosen on the validation split (NULL: no sweep)"),
            _c("rank", "INTEGER", "rank of the merged adapter"),
            _c("n_experts", "INTEGER", "number of experts merged"),
            _c("seconds", "DOUBLE", "time to merge"),
            _c("mean_delta_norm", "DOUBLE", "mean Frobenius norm of the merged per-module deltas"),
            _c("mean_expert_cosine", "DOUBLE", "mean cosine between merged and expert deltas"),
            _c("stats", "VARCHAR", "further per-method statistics as JSON text"),
        ),
    ),
    "merge_sweep": TableSpec(
        "every point of each merge's sweep (scale, and a second parameter where swept) on the validation split, and on test as a diagnostic",
        (
            _c("run_key", "VARCHAR", "merge run", False),
            _c("label", "VARCHAR", "model label of the merge"),
            _c("method", "VARCHAR", "merge method", False),
            _c("scale", "DOUBLE", "multiplier of the method's configured scale (lam, weights, scale) at this point", False),
            _c("benchmark", "VARCHAR", "domain", False),
            _c("n_problems", "INTEGER", "problems scored"),
            _c("accuracy", "DOUBLE", "mean accuracy over the samples"),
            _c("chosen", "BOOLEAN", "the point kept (best mean validation accuracy over the domains)"),
            _c("param", "VARCHAR", "the second parameter swept (merge.sweep_params), NULL when only the scale is"),
            _c("param_value", "DOUBLE", "its value at this point"),
            _c("split", "VARCHAR", "validation (what picks) or test (merge.test_points: a diagnostic, never used to pick)"),
        ),
    ),
    "experiment_arms": TableSpec(
        "one row per arm and seed of an experiment: the train and eval runs that answer it",
        (
            _c("experiment", "VARCHAR", "experiment name, e.g. entropy", False),
            _c("arm", "VARCHAR", "arm name, e.g. grpo, par-0.5, data-random (base: the untrained model)", False),
            _c("question", "INTEGER", "the question of the experiment the arm answers"),
            _c("seed", "INTEGER", "training seed"),
            _c("data", "VARCHAR", "training data variant: kmeans, random, few-clusters or full"),
            _c("domain", "VARCHAR", "training domain; its benchmark is the held-out one"),
            _c("changes", "VARCHAR", "config keys the arm sets beside the experiment's baseline, as JSON text"),
            _c("label", "VARCHAR", "model_label of the arm's evaluation"),
            _c("curate_run", "VARCHAR", "curation run of the training data (NULL: the full split)"),
            _c("train_run", "VARCHAR", "training run (NULL for the base model)"),
            _c("eval_run", "VARCHAR", "evaluation run"),
        ),
    ),
    "eval_problems": TableSpec(
        "derived from eval_samples at ingest: one row per problem",
        (
            _c("eval_run", "VARCHAR", "evaluation run", False),
            _c("model_label", "VARCHAR", "model", False),
            _c("benchmark", "VARCHAR", "benchmark", False),
            _c("problem_id", "VARCHAR", "problem", False),
            _c("n_samples", "INTEGER", "n: samples stored for the problem"),
            _c("n_correct", "INTEGER", "c: correct samples"),
            _c("accuracy", "DOUBLE", "c / n"),
            _c("mean_entropy", "DOUBLE", "mean of the samples' mean token entropy"),
            _c("mean_tokens", "DOUBLE", "mean completion length in tokens"),
            _c("no_answer_rate", "DOUBLE", "share of samples without an answer the verifier could read"),
            _c("hit_cap_rate", "DOUBLE", "share of samples cut at the token cap"),
        ),
        derived=True,
    ),
    "eval_problems_at_k": TableSpec(
        "derived from eval_samples at ingest: one row per problem and k",
        (
            _c("eval_run", "VARCHAR", "evaluation run", False),
            _c("model_label", "VARCHAR", "model", False),
            _c("benchmark", "VARCHAR", "benchmark", False),
            _c("problem_id", "VARCHAR", "problem", False),
            _c("k", "INTEGER", "1, 2, 4, ... below n, and n", False),
            _c("pass_at_k", "DOUBLE", "1 - C(n-c, k) / C(n, k)"),
            _c("maj_correct", "BOOLEAN", "majority-voted answer of the first k samples is correct"),
            _c("distinct_2", "DOUBLE", "unique / total word bigrams of the first k completions"),
            _c("unique_answer_ratio", "DOUBLE", "distinct non-NULL answers of the first k / k"),
        ),
        derived=True,
    ),
    "eval_comparisons": TableSpec(
        "derived after each evaluation ingest: every evaluated model against the reference of its evaluation "
        "group (same base model, data and evaluate settings), per benchmark, with a paired bootstrap interval",
        (
            _c("eval_run", "VARCHAR", "evaluation run of the compared model", False),
            _c("model_label", "VARCHAR", "compared model", False),
            _c("benchmark", "VARCHAR", "benchmark", False),
            _c("reference", "VARCHAR", "reference model label (base, or base@greedy for greedy runs)", False),
            _c("reference_run", "VARCHAR", "evaluation run of the reference"),
            _c("metric", "VARCHAR", "avg@k, or pass@k at the smaller sample count of the two runs"),
            _c("n_problems", "INTEGER", "problems both runs scored"),
            _c("accuracy", "DOUBLE", "the metric for the compared model"),
            _c("reference_accuracy", "DOUBLE", "the metric for the reference"),
            _c("diff", "DOUBLE", "accuracy - reference_accuracy"),
            _c("ci_low", "DOUBLE", "2.5% point of the paired bootstrap over problems (2,000 resamples)"),
            _c("ci_high", "DOUBLE", "97.5% point of the same"),
        ),
        derived=True,
    ),
    "merge_summary": TableSpec(
        "derived after each evaluation ingest: per merged model and domain (and the mean of its seen domains), "
        "accuracy, normalized accuracy, retained gain and the difference from task arithmetic, with intervals",
        (
            _c("eval_run", "VARCHAR", "evaluation run of the merged model", False),
            _c("model_label", "VARCHAR", "merged:<method>[-without-<domain>]", False),
            _c("method", "VARCHAR", "merge method"),
            _c("left_out", "VARCHAR", "domain whose expert is not in the merge (NULL: every expert merged)"),
            _c("scale", "DOUBLE", "scale multiplier chosen on validation (NULL: the configured scale)"),
            _c("benchmark", "VARCHAR", "domain, or '(mean of seen)'", False),
            _c("seen", "BOOLEAN", "the domain's expert is one of the merged experts"),
            _c("n_problems", "INTEGER", "problems scored by the merge, the base and the expert"),
            _c("accuracy", "DOUBLE", "avg@k of the merged model"),
            _c("base_accuracy", "DOUBLE", "avg@k of the base model"),
            _c("expert_accuracy", "DOUBLE", "avg@k of the domain's expert"),
            _c("normalized", "DOUBLE", "accuracy / expert_accuracy"),
            _c("retained_gain", "DOUBLE", "(accuracy - base) / (expert - base); NULL when the expert did not gain"),
            _c("retained_low", "DOUBLE", "2.5% point of the retained gain over paired resamples of the problems"),
            _c("retained_high", "DOUBLE", "97.5% point of the same"),
            _c("vs_task_arithmetic", "DOUBLE", "accuracy minus the task-arithmetic merge of the same experts"),
            _c("vs_ta_low", "DOUBLE", "2.5% point of that difference (paired bootstrap over problems)"),
            _c("vs_ta_high", "DOUBLE", "97.5% point of the same"),
        ),
        derived=True,
    ),
    "comparisons_state": TableSpec(
        "derived: which evaluations the comparison tables (eval_comparisons, merge_summary) were last computed from; "
        "when a newer evaluation is in runs, the next ingest or run recomputes them",
        (
            _c("newest_evaluation", "TIMESTAMP", "finished_at of the newest evaluate run the tables cover"),
            _c("evaluations", "INTEGER", "evaluate runs in runs at that refresh"),
        ),
        derived=True,
    ),
}

VIEW_DESCRIPTIONS: dict[str, str] = {
    "eval_summary": "avg@k, pass@k, maj@k, entropy and diversity per run, model, benchmark and k",
    "entropy_vs_accuracy": "Spearman correlation of per-problem mean entropy with accuracy",
    "train_curves": "train_steps pivoted wide: one column per metric",
    "train_summary": "per training run: expert, entropy mode, entropy and reward early (first 10% of steps) and "
    "late (last 20%), the late/early entropy ratio",
    "experiment_results": "per experiment arm and seed: entropy and reward early and late in training, "
    "held-out accuracy and entropy in and out of domain, what the controllers applied",
}

# Always present in train_curves so that reports and users can rely on them.
CORE_TRAIN_METRICS = ("reward", "accuracy", "entropy")


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def create_table_sql(name: str) -> str:
    spec = TABLES[name]
    cols = ",\n  ".join(
        f"{quote_ident(c.name)} {c.sql_type}{'' if c.nullable else ' NOT NULL'}" for c in spec.columns
    )
    return f"CREATE TABLE IF NOT EXISTS {name} (\n  {cols}\n)"
