"""Benchmark: what MKL's COMPATIBLE branch (POLYMATH_CPU_KERNELS=compatible) costs against the default avx2 set.

    .venv/bin/python bench/cpu_kernels.py [--steps 6] [--rounds 2] [--threads 1]

The demo model's two kinds of work, each kernel set in a fresh process (the set is fixed when torch loads),
alternating round by round so that load from other processes hits both alike: warm-start steps (the demo's
tiny model, its SFT batch of 32 sequences of 150 characters, AdamW) and a sampling pass (64 completions of 96
tokens through the KV-cached loop every sampler uses). Prints the seconds of each, their ratio
(compatible / avx2), and whether the two sets end with the same weights (they round differently: they should
not, and this machine cannot show which one another machine reproduces).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETS = ("avx2", "compatible")


def child(steps: int, threads: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import hashlib
    import time

    import flows  # noqa: F401  (first: it pins the kernel set named in the environment)
    import torch

    from pipeline.config import load_config
    from polymath.decoding import Decoding, sample_tokens
    from training.models import build_tiny_model

    torch.set_num_threads(threads)
    tiny = load_config("demo").model.tiny
    model = build_tiny_model(tiny, vocab_size=100)
    opt = torch.optim.AdamW(model.parameters(), lr=tiny.sft_lr)
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(2, 100, (tiny.sft_batch_size, 150), generator=gen)
    start = time.perf_counter()
    for _ in range(steps):
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad()
    train = time.perf_counter() - start
    prompts = torch.randint(2, 100, (64, 40), generator=gen)
    start = time.perf_counter()
    with torch.no_grad():
        sample_tokens(model, prompts, torch.ones_like(prompts), Decoding(temperature=1.0, top_p=1.0, cap=96), [1],
                      torch.Generator().manual_seed(0))
    sample = time.perf_counter() - start
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()[:12]
    return {"train": train / steps, "sample": sample, "weights": digest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.steps, args.threads)))
        return
    runs: dict[str, list[dict]] = {s: [] for s in SETS}
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR")}
    for _ in range(args.rounds):
        for kernel_set in SETS:
            out = subprocess.run([sys.executable, __file__, "--child", "--steps", str(args.steps), "--threads",
                                  str(args.threads)], env={**env, "POLYMATH_CPU_KERNELS": kernel_set},
                                 capture_output=True, text=True, check=True)
            runs[kernel_set].append(json.loads(out.stdout.strip().splitlines()[-1]))
    for kind, unit in (("train", "s per warm-start step"), ("sample", "s per sampling pass")):
        a, c = (statistics.median(r[kind] for r in runs[s]) for s in SETS)
        print(f"{kind}: avx2 {a:.3f} {unit}, compatible {c:.3f}, ratio compatible / avx2 {c / a:.2f}")
    digests = {s: runs[s][0]["weights"] for s in SETS}
    same = len({r["weights"] for s in SETS for r in runs[s]}) == 1
    listed = ", ".join(f"{s} {d}" for s, d in digests.items())
    print(f"weights after {args.steps} steps: {'identical' if same else 'different'} across the sets ({listed})")


if __name__ == "__main__":
    main()
