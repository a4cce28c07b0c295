"""Does the demo hold on other warm-start seeds? The model, train and evaluate stages once per seed.

    .venv/bin/python bench/demo_seeds.py --workspace workspace    # seed 0 is the demo itself: reused there

For each warm-start seed (``model.tiny.seed``; everything downstream keys on the model, so each seed trains
its own experts) it prints the step the warm start kept, why, and its probe accuracies, then per expert on
its own domain, each with its paired 95% bootstrap interval over test problems:

- the gain over the sampled base (avg@k at temperature 1): what RL gained, sharpening included;
- the greedy gain (``expert:<d>@greedy`` against ``base@greedy``) and the pass@k gain at one k: what the expert
  does that the base's best single guess, or k tries of it, does not: learned, not only sharpened.

The demo's targets: every expert at least 10 points above the sampled base with an interval above 0, and its
greedy gain's interval above 0. Runs are ordinary stage runs in the workspace (a rerun reuses them); the
flows run ``workers`` trainings and evaluations side by side as the demo does.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import flows  # noqa: F401  (first: it pins the CPU kernel set before torch loads, as the CLI does)
from evaluation.store import Store
from flows.runners import under
from pipeline.execution import execution_policy
from flows.stage_flows import evaluate_flow
from pipeline.config import load_config

TARGET_GAIN = 0.10


def _interval(row) -> str:
    return f"{100 * row['diff']:+.1f} [{100 * row.ci_low:+.1f}, {100 * row.ci_high:+.1f}]"


def seed_rows(store: Store, evals: list, seed: int) -> list[dict]:
    keys = ", ".join(f"'{r.key}'" for r in evals)
    table = store.query(
        "SELECT regexp_replace(model_label, '@greedy$', '') AS expert, benchmark, reference, metric, diff, ci_low, "
        f"ci_high, accuracy, reference_accuracy FROM eval_comparisons WHERE eval_run IN ({keys}) "
        "AND regexp_replace(model_label, '@greedy$', '') = 'expert:' || benchmark ORDER BY ALL")
    rows = []
    for expert, part in table.groupby("expert", sort=True):
        sampled = part[(part.reference == "base") & (part.metric == "avg@k")].iloc[0]
        greedy = part[part.reference == "base@greedy"].iloc[0]
        passk = part[(part.reference == "base") & part.metric.str.startswith("pass@")].iloc[0]
        meets = sampled["diff"] >= TARGET_GAIN and sampled.ci_low > 0 and greedy.ci_low > 0
        rows.append({"seed": seed, "expert": expert, "sampled base": f"{sampled.reference_accuracy:.3f}",
                     "gain (sampled)": _interval(sampled), "greedy base": f"{greedy.reference_accuracy:.3f}",
                     "gain (greedy)": _interval(greedy), f"gain ({passk.metric})": _interval(passk),
                     "meets targets": "yes" if meets else "no"})
    return rows


def markdown(rows: list[dict]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default="workspace")
    parser.add_argument("--seeds", default="0,1,2", help="warm-start seeds, comma-separated")
    parser.add_argument("--config", default="demo")
    args = parser.parse_args()

    root = Path(args.workspace).resolve()
    root.mkdir(parents=True, exist_ok=True)
    warm, experts = [], []
    for seed in (int(s) for s in args.seeds.split(",")):
        start = time.perf_counter()
        cfg = load_config(args.config, [f"model.tiny.seed={seed}"])
        result = under(evaluate_flow, execution_policy(cfg))(cfg, str(root), [])
        summary = result.model.manifest()["summary"]
        kept = summary.get("sft_kept_accuracy") or {}
        warm.append({"seed": seed, "kept step": summary.get("sft_kept_step"), "stopped": summary.get("sft_stopped"),
                     **{d: f"{a:.3f}" for d, a in sorted(kept.items())},
                     "minutes": f"{(time.perf_counter() - start) / 60:.1f}"})
        experts += seed_rows(Store(root / "polymath.duckdb"), list(result.evals), seed)
    print("\nWarm start per seed (probe accuracy at the kept step, pooled with its confirmation samples):\n")
    print(markdown(warm))
    print("\nEach expert on its own domain, against the base (points, paired 95% bootstrap over test problems):\n")
    print(markdown(experts))
    met = sum(r["meets targets"] == "yes" for r in experts)
    print(f"\n{met} of {len(experts)} experts meet the targets (gain >= {100 * TARGET_GAIN:.0f} points over the "
          "sampled base with its interval above 0, and a greedy gain with its interval above 0)")


if __name__ == "__main__":
    main()
