"""Benchmark: training rollouts through polymath's KV-cached loop against TRL's ``generate``, on the demo.

    .venv/bin/python bench/rollouts.py --workspace workspace [--steps 30] [--rounds 2] [--domain legs]

Trains one expert of a finished demo workspace (its base model and curated prompts) for ``--steps`` steps
with each ``train.rollout_engine``, alternating engines round by round so that load from other processes
hits both alike, one torch thread as the demo trains. Prints the seconds per step of each and their ratio
(kv-cache / generate), and the mean completion length (the two engines draw other completions once the first
row of a batch ends, so their lengths, hence their costs, can differ a little).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import flows  # noqa: E402,F401  (first: it pins the CPU kernel set, as the CLI does)
from pipeline.config import load_config  # noqa: E402
from pipeline.curate import curated_problems  # noqa: E402
from pipeline.model import model_dir  # noqa: E402
from pipeline.plan import plan_runs  # noqa: E402
from polymath.workspace import Workspace  # noqa: E402

ENGINES = ("kv-cache", "generate")


def finished_inputs(ws: Workspace, cfg):
    """The demo's finished model, data and curate runs in ``ws`` (by the plan of ``cfg``)."""
    from pipeline.stage import ref

    rows = {r.stage: r for r in plan_runs(cfg, ws) if r.stage in ("data", "curate", "model")}
    missing = [s for s in ("data", "curate", "model") if s not in rows or rows[s].state != "finished"]
    if missing:
        raise SystemExit(f"{ws.root}: no finished {', '.join(missing)} run of the demo; run `polymath run` first")
    return {s: ref(ws, s, rows[s].key, s) for s in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default="workspace")
    parser.add_argument("--config", default="demo")
    parser.add_argument("--domain", default="legs")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from training.expert import train_expert
    from polymath.verifiers import reward

    cfg = load_config(args.config)
    ws = Workspace(args.workspace)
    runs = finished_inputs(ws, cfg)
    problems = [p for p in curated_problems(runs["data"], runs["curate"]) if p.domain == args.domain]
    seconds: dict[str, list[float]] = {e: [] for e in ENGINES}
    lengths: dict[str, list[float]] = {e: [] for e in ENGINES}
    with tempfile.TemporaryDirectory(prefix="polymath-bench-rollouts-") as tmp:
        for r in range(args.rounds):
            for engine in ENGINES if r % 2 == 0 else reversed(ENGINES):
                config = cfg.train.model_copy(update={"steps": args.steps, "rollout_engine": engine})
                start = time.perf_counter()
                result = train_expert(model_dir(runs["model"]), problems, reward, config,
                                      Path(tmp) / f"{engine}-{r}", args.domain, load=cfg.model.load_options())
                seconds[engine].append((time.perf_counter() - start) / args.steps)
                wide = result.steps.pivot_table(index="step", columns="metric", values="value")
                lengths[engine].append(float(wide["response_length"].mean()))
                print(f"round {r + 1} {engine:<9} {seconds[engine][-1]:.3f} s/step, "
                      f"mean completion {lengths[engine][-1]:.1f} tokens", flush=True)
    kv, gen = (statistics.mean(seconds[e]) for e in ENGINES)
    print(f"\n{args.domain}, {args.steps} steps x {args.rounds} rounds per engine, one torch thread: kv-cache "
          f"{kv:.3f} s/step, generate {gen:.3f} s/step, ratio {kv / gen:.2f}; mean completion "
          f"{statistics.mean(lengths['kv-cache']):.1f} vs {statistics.mean(lengths['generate']):.1f} tokens")


if __name__ == "__main__":
    main()
