"""The learnability probe's cost, as a ratio to one expert's GRPO training, both on the demo.

    make demo                          # a finished demo workspace (its data and base model are reused)
    .venv/bin/python bench/probe.py    # probe curate.probe_max candidates x curate.probe_k samples, then one training

Both run in this process, one after the other, on the demo's base model; nothing else should be running.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pipeline import curate, data, model
from pipeline.config import load_config
from pipeline.curate import _probe_sample, probe_pass_rates
from pipeline.model import model_dir
from polymath.workspace import Workspace
from training.expert import train_expert
from polymath.verifiers import reward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default="workspace")
    parser.add_argument("--probe-k", type=int, default=4)
    parser.add_argument("--probe-max", type=int, default=2000)
    parser.add_argument("--domain", default="gcd")
    args = parser.parse_args()

    cfg = load_config("demo", [f"curate.probe_k={args.probe_k}", f"curate.probe_max={args.probe_max}"])
    ws = Workspace(Path(args.workspace))
    data_run = data.run(cfg, ws)
    base = model.run(cfg, ws, data=data_run)
    plain = load_config("demo")
    subset = [p for p in curate.curated_problems(data_run, curate.run(plain, ws, data=data_run, model=base))
              if p.domain == args.domain]

    candidates = _probe_sample(data.train_problems(data_run), cfg.curate.probe_max, cfg.curate.seed)
    start = time.perf_counter()
    probe = probe_pass_rates(cfg, base, candidates, "bench")
    probe_s = time.perf_counter() - start
    zero = float(((probe.p == 0) | (probe.p == 1)).mean())

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        train_expert(model_dir(base), subset, reward, plain.train, Path(out), args.domain,
                     load=plain.model.load_options())
        train_s = time.perf_counter() - start
    print(f"probe: {len(candidates)} prompts x {args.probe_k} samples in {probe_s:.1f} s "
          f"({len(candidates) * args.probe_k / probe_s:.0f} completions/s); zero-variance share {zero:.3f}")
    print(f"one expert ({args.domain}, {len(subset)} prompts, {plain.train.steps} rollout batches): {train_s:.1f} s")
    print(f"probe / training: {probe_s / train_s:.2f}")


if __name__ == "__main__":
    main()
