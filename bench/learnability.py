"""Does learnability-aware curation help? Three experts of one demo domain, trained on subsets of one size.

    .venv/bin/python bench/learnability.py --workspace workspace-learnability    # about 12 minutes on 2 cores

Subsets (k prompts each, one domain): ``kmeans-learnable`` (k-means on MiniLM, the most learnable prompt of
each cluster, by the base model's probe), ``kmeans-centroid`` on MiniLM, and ``random``. For each it prints
the probe's zero-variance share of the subset (p in {0, 1}), the share of zero-variance GRPO groups seen in
training (``zero_std_group_frac`` in ``train_steps``), and held-out accuracy with a paired bootstrap interval
over problems against the random subset's expert. Stages are ordinary runs: a rerun reuses them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from evaluation.compare import paired_bootstrap
from pipeline import curate, data, evaluate, model, train
from pipeline.config import load_config
from pipeline.ingest import ingest_all
from polymath.workspace import Workspace

ARMS = {"kmeans-learnable": ["curate.strategy=kmeans-learnable"], "kmeans-centroid": [], "random": ["curate.strategy=random"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default="workspace-learnability")
    parser.add_argument("--domain", default="gcd")
    parser.add_argument("--k", type=int, default=600)
    parser.add_argument("--probe-k", type=int, default=4)
    parser.add_argument("--probe-max", type=int, default=2000)
    args = parser.parse_args()

    ws = Workspace(Path(args.workspace))
    # every arm draws from the same probed candidates, so the subsets differ only by how they are chosen
    common = [f"curate.domains=[{args.domain}]", f"train.domains=[{args.domain}]", f"curate.k={args.k}",
              f"curate.probe_k={args.probe_k}", f"curate.probe_max={args.probe_max}", f"evaluate.domains=[{args.domain}]"]
    rows, samples = [], {}
    base_cfg = load_config("demo", common)
    data_run = data.run(base_cfg, ws)
    base = model.run(base_cfg, ws, data=data_run)
    refs = [data_run, base]
    for arm, changes in ARMS.items():
        cfg = load_config("demo", common + changes)
        chosen = curate.run(cfg, ws, data=data_run, model=base)
        expert = train.run(cfg, ws, model=base, data=data_run, curate=chosen, domain=args.domain, label=f"expert:{args.domain}@{arm}")
        scored = evaluate.run(cfg, ws, model=base, data=data_run, target=expert)
        refs += [chosen, expert, scored]
        metrics = pd.read_parquet(chosen.dir / "curation_metrics.parquet")
        beside = metrics[metrics.strategy == "random"]  # the random subsets every curate run measures
        mine = metrics[metrics.strategy == arm]
        steps = pd.read_parquet(expert.dir / "train_steps.parquet")
        held = pd.read_parquet(scored.dir / "eval_samples.parquet")
        per_problem = held[held.benchmark == args.domain].groupby("problem_id")["correct"].mean()
        samples[arm] = per_problem
        rows.append({
            "subset": arm,
            "zero_variance_frac (probe)": mine.loc[mine.metric == "zero_variance_frac", "value"].mean(),
            "learnability (probe)": mine.loc[mine.metric == "learnability", "value"].mean(),
            "vendi": mine.loc[mine.metric == "vendi", "value"].mean(),
            "zero_std_group_frac (training)": steps.loc[steps.metric == "zero_std_group_frac", "value"].mean(),
            "heldout_accuracy": per_problem.mean(),
        })
    ingest_all(ws, refs)
    table = pd.DataFrame(rows).set_index("subset")
    for arm in ARMS:
        diffs = (samples[arm] - samples["random"]).to_numpy()
        low, high = paired_bootstrap(diffs)
        table.loc[arm, "vs random"] = f"{np.mean(diffs):+.3f} [{low:+.3f}, {high:+.3f}]"
    randoms = beside.groupby("metric")["value"].mean()
    print(table.round(4).to_string())
    print(f"random subsets beside the chosen one (mean of seeds): zero_variance_frac {randoms.get('zero_variance_frac'):.4f}, "
          f"vendi {randoms.get('vendi'):.2f}")
    print(f"held-out: {len(samples['random'])} test problems of {args.domain}; intervals are 95% paired bootstrap "
          "over problems")


if __name__ == "__main__":
    main()
