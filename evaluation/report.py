"""A markdown report with PNG plots, built from the results database alone.

Every section queries the store; a table with no rows yet gets a "no data yet"
line instead of a plot, so the report renders at any point of the pipeline.
Figures are drawn on bare ``matplotlib.figure.Figure`` objects (Agg canvas),
which leaves pyplot's global state alone.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from evaluation import compare
from evaluation.store import Store
from polymath.workspace import source_digest

NO_DATA = "_No data yet: run the {stage} stage (`polymath run --stage {stage}`)._"


def _fmt(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|")


def markdown_table(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured markdown table of ``df`` (floats rounded to ``digits``)."""
    header = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = ["| " + " | ".join(_fmt(v, digits) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _save(fig: Figure, out_dir: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out_dir / name, dpi=110)
    return name


def section(title: str, stage: str, sql: str):
    """A report section: its title, the query its body starts from, and the stage that fills it. The body gets
    the query's rows (never empty: without rows the section says which stage to run) and returns its lines."""
    def wrap(body):
        @functools.wraps(body)
        def make(store: Store, out_dir: Path) -> list[str]:
            frame = store.query(sql)
            return [f"## {title}", ""] + (body(frame, store, out_dir) if len(frame) else [NO_DATA.format(stage=stage)])
        return make
    return wrap


def _runs_section(store: Store, out_dir: Path) -> list[str]:
    runs = store.query(
        "SELECT stage, label, left(run_key, 12) AS run_key, status, round(seconds, 1) AS seconds "
        "FROM runs ORDER BY started_at NULLS LAST, stage"
    )
    lines = ["## Runs", ""]
    lines.append(markdown_table(runs, 1) if len(runs) else "_No runs recorded yet: `polymath run`._")
    return lines


@section("Curation: diversity of the selection", "curate",
         "SELECT strategy, metric, avg(value) AS value FROM curation_metrics GROUP BY ALL ORDER BY ALL")
def _curation_section(metrics: pd.DataFrame, store: Store, out_dir: Path) -> list[str]:
    wide = metrics.pivot(index="strategy", columns="metric", values="value").reset_index()
    return ["Mean over seeds; `random` is the baseline.", "", markdown_table(wide)]


@section("Training: reward and entropy per expert", "train",
         "SELECT run_key, expert, step, reward, entropy FROM train_curves ORDER BY ALL")
def _training_section(curves: pd.DataFrame, store: Store, out_dir: Path) -> list[str]:
    fig = Figure(figsize=(11, 4))
    ax_reward, ax_entropy = fig.subplots(1, 2)
    for (run_key, expert), g in curves.groupby(["run_key", "expert"], sort=True):
        label = f"{expert} ({run_key[:8]})"
        ax_reward.plot(g["step"], g["reward"], label=label)
        ax_entropy.plot(g["step"], g["entropy"], label=label)
    ax_reward.set(title="mean reward", xlabel="step")
    ax_entropy.set(title="token entropy (nats)", xlabel="step")
    ax_reward.legend(fontsize=8)
    name = _save(fig, out_dir, "train_curves.png")
    last = store.query(
        "SELECT expert, left(run_key, 8) AS run, max(step) AS steps, "
        "arg_max(reward, step) AS final_reward, arg_max(entropy, step) AS final_entropy "
        "FROM train_curves GROUP BY ALL ORDER BY ALL"
    )
    return [f"![training curves]({name})", "", markdown_table(last)]


@section("Evaluation: accuracy per model and benchmark", "evaluate",
         "SELECT * FROM eval_summary s WHERE k = (SELECT max(k) FROM eval_summary t "
        "WHERE t.eval_run = s.eval_run AND t.model_label = s.model_label AND t.benchmark = s.benchmark) "
        "ORDER BY eval_run, model_label, benchmark")
def _evaluation_section(summary: pd.DataFrame, store: Store, out_dir: Path) -> list[str]:
    summary["cell"] = [
        f"{a:.3f} / {p:.3f} / {m:.3f}" for a, p, m in zip(summary.avg_at_k, summary.pass_at_k, summary.maj_at_k)
    ]
    table = summary.pivot(index=["eval_run", "model_label"], columns="benchmark", values="cell").reset_index()
    ks = sorted(set(summary["k"]))
    lines = [
        f"Cells: avg@k / pass@k / maj@k at k = n samples per problem ({', '.join(map(str, ks))}).",
        "",
        markdown_table(table),
        "",
        "### Diversity",
        "",
        markdown_table(summary[["eval_run", "model_label", "benchmark", "n_problems", "mean_entropy",
                                "distinct_2", "unique_answer_ratio"]]),
    ]
    curve = store.query("SELECT model_label, benchmark, k, avg(pass_at_k) AS pass_at_k FROM eval_summary "
                        "GROUP BY ALL ORDER BY ALL")
    benchmarks = sorted(set(curve["benchmark"]))
    fig = Figure(figsize=(4.5 * len(benchmarks), 3.6))
    axes = fig.subplots(1, len(benchmarks), squeeze=False)[0]
    for ax, bench in zip(axes, benchmarks):
        for model, g in curve[curve["benchmark"] == bench].groupby("model_label", sort=True):
            ax.plot(g["k"], g["pass_at_k"], marker="o", label=model)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set(title=bench, xlabel="k", ylabel="pass@k", ylim=(0, 1.02))
    axes[0].legend(fontsize=8)
    name = _save(fig, out_dir, "pass_at_k.png")
    return lines + ["", "### pass@k against k", "", f"![pass@k]({name})"]


@section("Against the base model: paired differences with 95% intervals", "evaluate",
         "SELECT model_label, benchmark, reference, metric, n_problems, accuracy, reference_accuracy, diff, ci_low, "
         "ci_high FROM eval_comparisons ORDER BY model_label, benchmark, metric")
def _comparison_section(rows: pd.DataFrame, store: Store, out_dir: Path) -> list[str]:
    return _with_verdicts(rows, "Difference from the reference evaluated with the same settings (avg@k; pass@k at the "
                          "smaller k of the two; greedy runs against base@greedy), and the percentile interval of the "
                          "paired bootstrap over problems (2,000 resamples); an interval that contains 0 is level.")


def _with_verdicts(rows: pd.DataFrame, intro: str) -> list[str]:
    """``intro``, then the rows with a verdict column: above or below when the interval excludes 0, else level."""
    rows["verdict"] = ["above" if lo > 0 else "below" if hi < 0 else "level" for lo, hi in zip(rows.ci_low, rows.ci_high)]
    return [intro, "", markdown_table(rows)]


@section("Learned or sharpened: each expert on its own domain, like for like", "evaluate",
         "SELECT regexp_replace(model_label, '@greedy$', '') AS expert, benchmark, "
         "CASE WHEN reference = 'base@greedy' THEN 'greedy' ELSE metric END AS comparison, "
         "accuracy, reference_accuracy AS base, diff, ci_low, ci_high FROM eval_comparisons "
         "WHERE regexp_replace(model_label, '@greedy$', '') = 'expert:' || benchmark ORDER BY ALL")
def _learned_section(rows: pd.DataFrame, store: Store, out_dir: Path) -> list[str]:
    return _with_verdicts(rows, "Sampling at temperature 1 against the sampled base (avg@k) shows what RL gained; a "
                          "sharper distribution alone also raises it. Greedy against greedy, and pass@k against pass@k "
                          "at one k, do not reward sharpening: an expert above the base there learned what the base "
                          "could not do.")


@section("Entropy against accuracy (per prompt)", "evaluate",
         "SELECT model_label, benchmark, mean_entropy, accuracy FROM eval_problems "
        "WHERE mean_entropy IS NOT NULL ORDER BY ALL")
def _entropy_section(points: pd.DataFrame, store: Store, out_dir: Path) -> list[str]:
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    for model, g in points.groupby("model_label", sort=True):
        ax.scatter(g["mean_entropy"], g["accuracy"], s=12, alpha=0.6, label=model)
    ax.set(xlabel="mean token entropy of the prompt's samples (nats)", ylabel="accuracy over samples")
    ax.legend(fontsize=8)
    name = _save(fig, out_dir, "entropy_vs_accuracy.png")
    corr = store.query("SELECT * FROM entropy_vs_accuracy ORDER BY ALL")
    return [f"![entropy vs accuracy]({name})", "", "Spearman correlation per model and benchmark:", "",
                    markdown_table(corr)]


@section("Merging", "merge",
         "SELECT label, method, scale, rank, n_experts, seconds, mean_delta_norm, mean_expert_cosine, "
        "left(run_key, 8) AS run FROM merge_runs ORDER BY ALL")
def _merge_section(merges: pd.DataFrame, store: Store, out_dir: Path) -> list[str]:
    lines = [markdown_table(merges), ""]
    sweep = store.query("SELECT label || coalesce(' ' || param || '=' || param_value, '') AS label, "
                        "coalesce(split, 'validation') AS split, scale, avg(accuracy) AS accuracy, "
                        "bool_or(chosen) AS chosen FROM merge_sweep GROUP BY ALL ORDER BY ALL")
    if len(sweep):
        validation, test = sweep[sweep.split == "validation"], sweep[sweep.split == "test"]
        lines += ["### Scale chosen on the validation split", "",
                  "Mean validation accuracy over the merged experts' domains at each multiple of the method's own "
                  "scale (and each value of a second parameter, where one is swept); * marks the point kept, the "
                  "only one the test split sees.", "", markdown_table(sweep_grid(validation)), ""]
        if len(test):
            lines += ["Every point on the test split (`merge.test_points`, a diagnostic never used to pick): what "
                      "the validation pick costs.", "", markdown_table(sweep_grid(test)), "",
                      f"![validation and test accuracy against scale]({_sweep_plot(sweep, out_dir)})", ""]
    summary = store.query(
        "SELECT model_label, left_out, benchmark, seen, scale, accuracy, normalized, retained_gain, retained_low, "
        "retained_high, vs_task_arithmetic, vs_ta_low, vs_ta_high FROM merge_summary ORDER BY model_label, benchmark"
    )
    if not len(summary):
        return lines
    lines += ["### Retained gain", "",
              "Retained gain = (merged - base) / (expert - base) per domain, normalized accuracy = merged / expert, "
              "and the difference from the task-arithmetic merge of the same experts (accuracy points); brackets "
              "are 95% paired bootstrap intervals over problems. A domain is unseen when its expert was left out "
              "of the merge.", "", markdown_table(merge_headline(summary)), "", "Per domain:", "",
              markdown_table(summary.drop(columns=["left_out"])), ""]
    name = _retained_plot(summary, out_dir)
    return lines + [f"![retained gain per method and domain]({name})"]


def _sweep_plot(sweep: pd.DataFrame, out_dir: Path) -> str:
    """Per merge, validation (solid) and test (dashed) accuracy against the scale multiple."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for i, (label, part) in enumerate(sweep.groupby("label", sort=True)):
        color = f"C{i % 10}"
        for split, style in (("validation", "-"), ("test", "--")):
            line = part[part.split == split].sort_values("scale")
            ax.plot(line.scale, line.accuracy, style, color=color, marker="o", ms=3,
                    label=label.removeprefix("merged:") if split == "validation" else None)
    ax.set(xscale="log", xlabel="scale multiple", ylabel="mean accuracy (solid: validation, dashed: test)")
    ax.legend(fontsize=7)
    return _save(fig, out_dir, "merge_sweep.png")


def sweep_grid(sweep: pd.DataFrame) -> pd.DataFrame:
    """One row per merge, one column per scale multiple: validation accuracy, * on the chosen one."""
    cells = sweep.assign(cell=[f"{a:.3f}" + ("*" if c else "") for a, c in zip(sweep.accuracy, sweep.chosen)])
    grid = cells.pivot(index="label", columns="scale", values="cell").fillna("–")
    grid.columns = [f"x{c:g}" for c in grid.columns]
    return grid.reset_index()


def _interval(value: float, low: float, high: float, points: bool = False) -> str:
    """``value [low, high]``: a fraction to two places, or accuracy points (x100) signed to one place."""
    if not np.isfinite(value):
        return "–"
    if points:
        return f"{100 * value:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"
    return f"{value:.2f} [{low:.2f}, {high:.2f}]"


def merge_headline(summary: pd.DataFrame) -> pd.DataFrame:
    """Per merge: the mean over seen domains and the unseen domain, retained gain and the difference from task
    arithmetic, with intervals."""
    rows = []
    for label, part in summary.groupby("model_label", sort=True):
        mean = part[part.benchmark == compare.MEAN]
        unseen = part[~part.seen.astype(bool)]
        row = {"model_label": label, "scale": part.scale.iloc[0]}
        if len(mean):
            m = mean.iloc[0]
            row["seen: accuracy"] = m.accuracy
            row["seen: retained gain"] = _interval(m.retained_gain, m.retained_low, m.retained_high)
            row["seen: vs TA (points)"] = _interval(m.vs_task_arithmetic, m.vs_ta_low, m.vs_ta_high, points=True)
        for u in unseen.itertuples(index=False):
            row["unseen: accuracy"] = u.accuracy
            row["unseen: retained gain"] = _interval(u.retained_gain, u.retained_low, u.retained_high)
            row["unseen: vs TA (points)"] = _interval(u.vs_task_arithmetic, u.vs_ta_low, u.vs_ta_high, points=True)
        rows.append(row)
    return pd.DataFrame(rows)


def _retained_plot(summary: pd.DataFrame, out_dir: Path) -> str:
    """One panel per expert set (every expert, then each leave-one-out), one bar group per method."""
    sets = sorted(set(summary.left_out.dropna()))
    panels = [(None, summary[summary.left_out.isna()])] + [(d, summary[summary.left_out == d]) for d in sets]
    benchmarks = sorted(set(summary.benchmark))
    n_labels = max(part.model_label.nunique() for _, part in panels)
    fig = Figure(figsize=(max(7.0, 0.35 * n_labels * len(benchmarks)), 3.6 * len(panels)))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    width = 0.8 / len(benchmarks)
    for ax, (left_out, part) in zip(axes, panels):
        labels = sorted(set(part.model_label))
        for j, bench in enumerate(benchmarks):
            rows = part[part.benchmark == bench].set_index("model_label").reindex(labels)
            x = [i + (j - (len(benchmarks) - 1) / 2) * width for i in range(len(labels))]
            value = rows.retained_gain.astype(float)
            err = [(value - rows.retained_low.astype(float)).clip(lower=0),
                   (rows.retained_high.astype(float) - value).clip(lower=0)]
            unseen = bench == left_out
            ax.bar(x, value, width, yerr=err, capsize=2, label=bench + (" (unseen)" if unseen else ""),
                   hatch="//" if unseen else None)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.axhline(1, color="grey", linewidth=0.8, linestyle="--")
        suffix = f"-without-{left_out}" if left_out else ""
        ax.set_xticks(range(len(labels)), [lbl.removeprefix("merged:").removesuffix(suffix) for lbl in labels],
                      rotation=20, ha="right")
        ax.set(ylabel="retained gain",
               title=f"merges without the {left_out} expert" if left_out else "merges of every expert")
        ax.legend(fontsize=7, ncol=len(benchmarks))
    fig.suptitle("retained gain per merge and domain (95% paired bootstrap intervals)")
    return _save(fig, out_dir, "merge_retained_gain.png")


def _source_stamp(store: Store) -> str:
    """What the report is a function of: the database file as it stands and this module's code."""
    stat = Path(store.path).stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}:{source_digest('evaluation/report.py')}"


def write_report(store: Store, out_dir: Path, if_changed: bool = False) -> Path:
    """Write ``report.md`` and its PNGs into ``out_dir``; returns the markdown path.

    ``if_changed`` keeps a report written from the same database file by the same code (an unchanged
    rerun of the pipeline then draws no figures).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path, stamp_file = out_dir / "report.md", out_dir / ".report-source"
    stamp = _source_stamp(store) if Path(store.path).exists() else None
    if if_changed and stamp and path.exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
        return path
    sections = [
        ["# polymath report", "", f"Results from the workspace's `{store.path.name}`."],
        *(make(store, out_dir) for make in (_runs_section, _curation_section, _training_section,
                                              _evaluation_section, _comparison_section, _learned_section,
                                              _entropy_section,
                                              _merge_section)),
    ]
    path.write_text("\n\n".join("\n".join(s) for s in sections) + "\n")
    if stamp:
        stamp_file.write_text(stamp)
    return path
