"""Do the merge methods' rankings survive a retrained expert? The demo's experts for several training seeds,
every method merged at its validation pick, each compared with task arithmetic over seeds and problems.

    .venv/bin/python bench/merge_seeds.py --workspace workspace          # training seed 0 is the demo itself

For each training seed (``train.seed``: the warm-started model, the curated prompts and everything else stay
the demo's) the whole pipeline runs: four experts, every merge method (``--methods``; the demo itself merges
only RobustMerge and task arithmetic) at the scale its
validation split picks, with and without the gcd expert, evaluated on test. RobustMerge's ``keep`` is swept
beside its scale (``--keep``), to see whether its gap to task arithmetic is a pruning cost. Per merge it
prints its difference from the task-arithmetic merge of the same experts in accuracy points, on the seen
domains (mean) and on the unseen one, with a 95% interval from a two-level bootstrap: training seeds
resampled, then test problems within each seed (2,000 resamples), so that both an expert's retraining and
the test sample count. A method "beats" or "trails" task arithmetic only where that interval excludes 0.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

import flows  # noqa: F401  (first: it pins the CPU kernel set before torch loads, as the CLI does)
from evaluation.report import markdown_table as markdown
from evaluation.store import Store
from flows.runners import under
from pipeline.execution import execution_policy
from flows.stage_flows import pipeline
from pipeline.config import load_config

TA = "merged:task-arithmetic"
#: Every method compared: RobustMerge in both forms, the peft baselines, KnOTS and Core Space with both inner merges.
METHODS = "robustmerge,robustmerge-reference,task-arithmetic,ties,dare,knots,core-space,core-space-iso-cts"
RESAMPLES = 2000


def seed_problems(store: Store, evals: list, seed: int) -> pd.DataFrame:
    """Per merged model, domain and test problem of one training seed: accuracy over its samples."""
    keys = ", ".join(f"'{r.key}'" for r in evals if r.label.startswith("merged:"))
    frame = store.query("SELECT model_label, benchmark, problem_id, accuracy FROM eval_problems "
                        f"WHERE eval_run IN ({keys})")
    return frame.assign(seed=seed)


def _left_out(label: str) -> str | None:
    return label.split("-without-", 1)[1] if "-without-" in label else None


def differences(problems: pd.DataFrame) -> pd.DataFrame:
    """Per (merge, seed, domain, problem): the merge's accuracy minus task arithmetic's on the same experts."""
    rows = []
    for label, part in problems.groupby("model_label"):
        left_out = _left_out(label)
        reference = TA + (f"-without-{left_out}" if left_out else "")
        if label == reference:
            continue
        ta = problems[problems.model_label == reference].set_index(["seed", "benchmark", "problem_id"]).accuracy
        mine = part.set_index(["seed", "benchmark", "problem_id"]).accuracy
        diff = (mine - ta.reindex(mine.index)).dropna().rename("diff").reset_index()
        rows.append(diff.assign(model_label=label, seen=diff.benchmark != left_out))
    return pd.concat(rows, ignore_index=True)


def two_level_interval(diffs: pd.DataFrame, rng: np.random.Generator) -> tuple[float, float, float]:
    """Mean difference and its 95% interval: seeds resampled, then problems within each resampled seed."""
    by_seed = [g["diff"].to_numpy() for _, g in diffs.groupby("seed")]
    means = np.empty(RESAMPLES)
    for b in range(RESAMPLES):
        picked = rng.integers(len(by_seed), size=len(by_seed))
        means[b] = np.mean([by_seed[i][rng.integers(len(by_seed[i]), size=len(by_seed[i]))].mean() for i in picked])
    return float(np.mean([d.mean() for d in by_seed])), *np.percentile(means, [2.5, 97.5]).tolist()


def ranking(diffs: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per merge and part (seen domains pooled, the unseen domain): the difference from task arithmetic."""
    rng = np.random.default_rng(seed)
    rows = []
    for (label, seen), part in diffs.groupby(["model_label", "seen"], sort=True):
        mean, low, high = two_level_interval(part, rng)
        verdict = "beats" if low > 0 else "trails" if high < 0 else "level"
        per_seed = " / ".join(f"{100 * g['diff'].mean():+.1f}" for _, g in part.groupby("seed"))
        rows.append({"merge": label.removeprefix("merged:"), "domains": "seen" if seen else "unseen",
                     "vs task arithmetic (points)": f"{100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]",
                     "per seed": per_seed, "verdict": verdict})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default="workspace")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds, comma-separated")
    parser.add_argument("--config", default="demo")
    parser.add_argument("--methods", default=METHODS, help="merge methods, comma-separated (task-arithmetic is the "
                        "reference every other one is compared with)")
    parser.add_argument("--keep", default="0.2,0.5,1.0", help="RobustMerge keep values swept beside the scale "
                        "(empty: the configured keep only)")
    args = parser.parse_args()

    root = Path(args.workspace).resolve()
    root.mkdir(parents=True, exist_ok=True)
    extra = [f"merge.methods=[{args.methods}]", "merge.seeds=[0, 1]"]  # DARE with two drop masks
    extra += [f"merge.sweep_params={{robustmerge: {{keep: [{args.keep}]}}}}"] if args.keep else []
    problems, picks = [], []
    for seed in (int(s) for s in args.seeds.split(",")):
        start = time.perf_counter()
        cfg = load_config(args.config, [f"train.seed={seed}", *extra])
        result = under(pipeline, execution_policy(cfg))(cfg, str(root))
        store = Store(root / "polymath.duckdb")
        problems.append(seed_problems(store, list(result.evals), seed))
        for merge in result.merges:
            summary = merge.manifest()["summary"]
            picks.append({"seed": seed, "merge": merge.label.removeprefix("merged:"), "scale": summary["scale"],
                          **summary.get("swept", {}), "edge": ", ".join(summary.get("grid_edge", [])) or "-"})
        print(f"training seed {seed}: {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    print("\nValidation picks per seed (scale multiple; keep where swept; a pick on the edge of its grid):\n")
    frame = pd.DataFrame(picks).astype(object)
    print(markdown(frame.where(frame.notna(), "-")))
    print("\nEach merge against task arithmetic on the same experts (accuracy points; 95% interval over training "
          f"seeds x test problems, {RESAMPLES} two-level resamples):\n")
    print(markdown(ranking(differences(pd.concat(problems, ignore_index=True)))))


if __name__ == "__main__":
    main()
