"""The results database's views and derived-statistics SQL.

SQL text only; ``evaluation.store`` is the module that runs it.

Two tables are derived rather than written by a stage: ``eval_problems`` and
``eval_problems_at_k`` hold per-problem statistics computed inside the same
transaction that ingests ``eval_samples`` (``PROBLEMS_TEMP_SQL`` and the
statements after it), so the summary views only aggregate a few rows per
problem instead of rescanning every completion. Everything "at k" is defined on the problem's samples as follows:

- ``pass_at_k``: the unbiased estimator ``1 - C(n-c, k) / C(n, k)`` over all
  ``n`` stored samples (``c`` correct), computed with ``lgamma``;
- ``avg_at_k``: ``c / n``, the unbiased estimate of the mean accuracy of k samples;
- ``maj_correct``, ``distinct_2``, ``unique_answer_ratio``: on the first ``k``
  samples in ``sample_idx`` order (samples are i.i.d., so the prefix is an
  unbiased draw of k of them).

``k`` runs over the ladder 1, 2, 4, ... below ``n``, plus ``n`` itself. For
any other k, the SQL macro ``pass_at_k(n, c, k)`` is stored in the database:
``SELECT model_label, avg(pass_at_k(n_samples, n_correct, 5)) FROM eval_problems
GROUP BY 1`` (NULL where k > n).

Distinct-2 needs the completions' text, and tokenizing a million completions
would dominate an ingest. So each sample row carries ``n_bigrams`` (word
bigrams in its completion) and ``new_bigrams`` (those absent from the samples
before it in ``sample_idx`` order), computed where the completions are made
(``evaluation.metrics.bigram_novelty``; a rounding error next to generation).
Distinct-2 of the first k samples is then ``sum(new_bigrams) / sum(n_bigrams)``
over them, integer sums in SQL.
"""

from __future__ import annotations

from evaluation.schema import CORE_TRAIN_METRICS, PROBLEM_KEY, quote_ident

_KEY = ", ".join(PROBLEM_KEY)

# 1 - C(n-c, k) / C(n, k) through log-gamma: exact to ~1e-12 without huge binomials.
PASS_AT_K_MACRO_SQL = """
CREATE OR REPLACE MACRO pass_at_k(n, c, k) AS
  CASE WHEN k < 1 OR k > n THEN NULL
       WHEN n - c < k THEN 1.0
       ELSE 1.0 - exp(lgamma(n - c + 1) - lgamma(n - c - k + 1) - lgamma(n + 1) + lgamma(n - k + 1)) END
"""

EVAL_SUMMARY_SQL = f"""
CREATE OR REPLACE VIEW eval_summary AS
SELECT {_KEY.replace(', problem_id', '')}, a.k,
       count(*) AS n_problems,
       sum(p.n_samples) AS n_samples,
       avg(p.accuracy) AS avg_at_k,
       avg(a.pass_at_k) AS pass_at_k,
       avg(a.maj_correct::DOUBLE) AS maj_at_k,
       avg(p.mean_entropy) AS mean_entropy,
       avg(a.distinct_2) AS distinct_2,
       avg(a.unique_answer_ratio) AS unique_answer_ratio,
       avg(p.mean_tokens) AS mean_tokens,
       avg(p.no_answer_rate) AS no_answer_rate,
       avg(p.hit_cap_rate) AS hit_cap_rate
FROM eval_problems_at_k a JOIN eval_problems p USING ({_KEY})
GROUP BY ALL
"""

# Average ranks for ties: rank() gives the lowest rank of a tie group, the
# group's size moves it to the middle. corr() of the ranks is Spearman's rho.
ENTROPY_VS_ACCURACY_SQL = """
CREATE OR REPLACE VIEW entropy_vs_accuracy AS
WITH ranked AS (
  SELECT eval_run, model_label, benchmark, mean_entropy, accuracy,
         rank() OVER (PARTITION BY eval_run, model_label, benchmark ORDER BY mean_entropy)
           + (count(*) OVER (PARTITION BY eval_run, model_label, benchmark, mean_entropy) - 1) / 2.0
           AS entropy_rank,
         rank() OVER (PARTITION BY eval_run, model_label, benchmark ORDER BY accuracy)
           + (count(*) OVER (PARTITION BY eval_run, model_label, benchmark, accuracy) - 1) / 2.0
           AS accuracy_rank
  FROM eval_problems
  WHERE mean_entropy IS NOT NULL AND NOT isnan(mean_entropy)
)
SELECT eval_run, model_label, benchmark,
       count(*) AS n_problems,
       CASE WHEN var_pop(entropy_rank) > 0 AND var_pop(accuracy_rank) > 0
            THEN corr(entropy_rank, accuracy_rank) END AS spearman,
       avg(mean_entropy) AS mean_entropy,
       avg(accuracy) AS accuracy
FROM ranked
GROUP BY ALL
"""


# A controller acts on a step when it applies an entropy coefficient of at least ACTING_COEF (a third of the
# constant bonus that moved the demo's entropy) or a PAR lambda of at most ACTING_LAMBDA.
ACTING_COEF = 0.01
ACTING_LAMBDA = 0.9

# "initial" is the first 10% of steps (at least step 1), "final" the last 20%: single steps are batches of a few
# prompts, too noisy to compare arms by. The held-out columns are the arm's evaluation on the test split of its
# training domain, the same prompts for every arm; ood_accuracy its evaluation on the other domains it was
# evaluated on and never trained on; reference_entropy_* its teacher-forced entropy along the in-domain reference
# solutions (token-weighted, digit and other positions). The controller columns: the mean applied value over all steps and the share
# of steps it acted on; pos_clipped_high_share: of the tokens with positive advantage, the share the upper
# clip bound cut (clip-higher can free at most these).
EXPERIMENT_RESULTS_SQL = f"""
CREATE OR REPLACE VIEW experiment_results AS
WITH span AS (
  SELECT run_key, max(step) AS n_steps FROM train_steps GROUP BY run_key
),
curve AS (
  SELECT t.run_key, s.n_steps,
         avg(value) FILTER (WHERE metric = 'entropy' AND step <= greatest(1, 0.1 * s.n_steps)) AS entropy_initial,
         avg(value) FILTER (WHERE metric = 'entropy' AND step > 0.8 * s.n_steps) AS entropy_final,
         avg(value) FILTER (WHERE metric = 'entropy_target' AND step > 0.8 * s.n_steps) AS entropy_target,
         avg(value) FILTER (WHERE metric = 'reward' AND step <= greatest(1, 0.1 * s.n_steps)) AS reward_initial,
         avg(value) FILTER (WHERE metric = 'reward' AND step > 0.8 * s.n_steps) AS reward_final,
         avg(value) FILTER (WHERE metric = 'entropy_coef') AS coef_mean,
         avg(CASE WHEN value >= {ACTING_COEF} THEN 1.0 ELSE 0.0 END) FILTER (WHERE metric = 'entropy_coef') AS coef_acting,
         avg(value) FILTER (WHERE metric = 'par_lambda') AS lambda_mean,
         avg(CASE WHEN value <= {ACTING_LAMBDA} THEN 1.0 ELSE 0.0 END) FILTER (WHERE metric = 'par_lambda') AS lambda_acting,
         avg(value) FILTER (WHERE metric = 'par_threshold' AND NOT isnan(value)) AS par_threshold,
         sum(value) FILTER (WHERE metric = 'clip_frac_high')
           / nullif(sum(value) FILTER (WHERE metric = 'pos_adv_token_frac'), 0) AS pos_clipped_high_share
  FROM train_steps t JOIN span s USING (run_key)
  GROUP BY t.run_key, s.n_steps
),
heldout AS (
  SELECT eval_run, benchmark, avg(accuracy) AS accuracy, avg(mean_entropy) AS entropy
  FROM eval_problems GROUP BY eval_run, benchmark
),
reference AS (
  SELECT eval_run, benchmark,
         sum(entropy * tokens) FILTER (WHERE kind = 'digit') / sum(tokens) FILTER (WHERE kind = 'digit') AS digit,
         sum(entropy * tokens) FILTER (WHERE kind = 'other') / sum(tokens) FILTER (WHERE kind = 'other') AS other
  FROM eval_reference_entropy GROUP BY eval_run, benchmark
)
SELECT a.experiment, a.arm, a.question, a.seed, a.data, a.domain, a.label, c.n_steps,
       c.entropy_initial, c.entropy_final, c.entropy_final / c.entropy_initial AS entropy_ratio,
       c.entropy_target, c.reward_initial, c.reward_final,
       h.accuracy AS heldout_accuracy, h.entropy AS heldout_entropy,
       (SELECT avg(o.accuracy) FROM heldout o WHERE o.eval_run = a.eval_run AND o.benchmark <> a.domain)
         AS ood_accuracy,
       f.digit AS reference_entropy_digit, f.other AS reference_entropy_other,
       c.coef_mean, c.coef_acting, c.lambda_mean, c.lambda_acting, c.par_threshold, c.pos_clipped_high_share,
       a.curate_run, a.train_run, a.eval_run
FROM experiment_arms a
LEFT JOIN curve c ON c.run_key = a.train_run
LEFT JOIN heldout h ON h.eval_run = a.eval_run AND h.benchmark = a.domain
LEFT JOIN reference f ON f.eval_run = a.eval_run AND f.benchmark = a.domain
"""


TRAIN_SUMMARY_SQL = """
CREATE OR REPLACE VIEW train_summary AS
WITH span AS (
  SELECT run_key, max(step) AS n_steps FROM train_steps GROUP BY run_key
)
SELECT t.run_key, t.expert, r.label,
       json_extract_string(r.config, '$.entropy.mode') AS entropy_mode,
       s.n_steps,
       avg(value) FILTER (WHERE metric = 'entropy' AND step <= greatest(1, 0.1 * s.n_steps)) AS entropy_initial,
       avg(value) FILTER (WHERE metric = 'entropy' AND step > 0.8 * s.n_steps) AS entropy_final,
       entropy_final / entropy_initial AS entropy_ratio,
       avg(value) FILTER (WHERE metric = 'entropy_coef' AND step > 0.8 * s.n_steps) AS coef_final,
       avg(value) FILTER (WHERE metric = 'reward' AND step <= greatest(1, 0.1 * s.n_steps)) AS reward_initial,
       avg(value) FILTER (WHERE metric = 'reward' AND step > 0.8 * s.n_steps) AS reward_final,
       avg(value) FILTER (WHERE metric = 'response_length') AS response_length
FROM train_steps t JOIN span s USING (run_key) LEFT JOIN runs r ON r.stage = 'train' AND r.run_key = t.run_key
GROUP BY ALL
"""


def train_curves_sql(metrics: list[str]) -> str:
    """The wide view of train_steps for the metrics present (plus the core ones).

    DuckDB cannot keep a data-dependent PIVOT in a view, so the column list is
    fixed when the view is (re)created: at ensure_schema and at every
    train_steps ingest.
    """
    names = list(CORE_TRAIN_METRICS) + sorted(set(metrics) - set(CORE_TRAIN_METRICS))
    cols = ",\n       ".join(
        f"avg(value) FILTER (WHERE metric = '{m.replace(chr(39), chr(39) * 2)}') AS {quote_ident(m)}"
        for m in names
    )
    return f"""
CREATE OR REPLACE VIEW train_curves AS
SELECT run_key, expert, step,
       {cols}
FROM train_steps
GROUP BY run_key, expert, step
ORDER BY run_key, expert, step
"""


# Derived statistics, computed at eval_samples ingest from the incoming rows
# (registered as ``{incoming}`` with a ``_row`` column numbering them). Every
# row of an ingest carries the replace key, so the incoming rows are exactly
# the eval_samples rows of the problems being replaced. The problems are
# numbered once (``pid``) and the samples within each (``pos``), so the window
# and the joins below work on narrow integer rows rather than four strings.
PROBLEMS_TEMP_SQL = f"""
CREATE OR REPLACE TEMP TABLE _polymath_p AS
SELECT {_KEY}, min(_row) AS pid,
       count(*) AS n, count(*) FILTER (WHERE correct) AS c,
       avg(correct::DOUBLE) AS accuracy, avg(mean_entropy) AS mean_entropy, avg(n_tokens) AS mean_tokens,
       avg(coalesce(no_answer, false)::DOUBLE) AS no_answer_rate, avg(coalesce(hit_cap, false)::DOUBLE) AS hit_cap_rate
FROM {{incoming}}
GROUP BY {_KEY}
"""

SAMPLES_TEMP_SQL = f"""
CREATE OR REPLACE TEMP TABLE _polymath_s AS
SELECT p.pid, p.n, i.correct, i.extracted_answer,
       (row_number() OVER w - 1)::INTEGER AS pos,
       sum(i.n_bigrams) OVER w AS cum_bigrams,
       sum(i.new_bigrams) OVER w AS cum_new_bigrams
FROM {{incoming}} i JOIN _polymath_p p USING ({_KEY})
WINDOW w AS (PARTITION BY p.pid ORDER BY i.sample_idx, i._row
             ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
"""

EVAL_PROBLEMS_SQL = f"""
INSERT INTO eval_problems
SELECT {_KEY}, n, c, accuracy, mean_entropy, mean_tokens, no_answer_rate, hit_cap_rate FROM _polymath_p
"""

# The ladder rows are the samples at positions k - 1, where the running sums
# already hold the prefix totals; (k & (k - 1)) = 0 picks the powers of two.
EVAL_PROBLEMS_AT_K_SQL = f"""
INSERT INTO eval_problems_at_k
WITH ladder AS (
  SELECT pid, n, pos + 1 AS k, cum_bigrams, cum_new_bigrams
  FROM _polymath_s
  WHERE pos + 1 = n OR ((pos + 1) & pos) = 0
),
votes AS (
  SELECT l.pid, l.k, s.extracted_answer,
         count(*) AS cnt, min(s.pos) AS first_pos, bool_or(s.correct) AS any_correct
  FROM ladder l JOIN _polymath_s s ON s.pid = l.pid AND s.pos < l.k
  WHERE s.extracted_answer IS NOT NULL
  GROUP BY l.pid, l.k, s.extracted_answer
),
majority AS (
  -- most votes wins; a tie goes to the answer that appeared first
  SELECT pid, k,
         arg_max(any_correct, {{'cnt': cnt, 'earliest': -first_pos}}) AS maj_correct,
         count(*) AS distinct_answers
  FROM votes GROUP BY pid, k
)
SELECT {', '.join('p.' + c for c in PROBLEM_KEY)}, l.k,
       pass_at_k(p.n, p.c, l.k) AS pass_at_k,
       coalesce(m.maj_correct, false) AS maj_correct,
       CASE WHEN l.cum_bigrams > 0 THEN l.cum_new_bigrams / l.cum_bigrams END AS distinct_2,
       coalesce(m.distinct_answers, 0) / l.k AS unique_answer_ratio
FROM ladder l
JOIN _polymath_p p USING (pid)
LEFT JOIN majority m USING (pid, k)
"""
