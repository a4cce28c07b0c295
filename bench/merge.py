"""Benchmark: factored merges vs their dense paths, on Qwen2.5-1.5B module shapes.

N experts of rank r (random factors) on every linear module of a decoder layer
(q 1536x1536, k/v 256x1536, o 1536x1536, gate/up 8960x1536, down 1536x8960).
Three paths compute the same RobustMerge update (same pruning and scales):

- ours exact:      the rank N*r LoRA of concatenated factors;
- ours compressed: plus truncated SVD to ``--target-rank`` via QR + an (N*r)x(N*r) core;
- dense:           the d x k update formed densely, then ``torch.linalg.svd`` (reduced,
                   on the tall orientation) and truncation to ``--target-rank``: what
                   peft's ``*_svd`` combinations do, minus their full_matrices default.

``--method knots`` measures KnOTS instead: ours (QR of the stacked factors, the SVD of an R x R core, TIES
on the R x k scaled aligned blocks; rank R = N*r, never a d x k matrix) against the dense transcription (the
d x N*k concatenation of the dense updates, its reduced SVD, TIES on the same blocks), both trimmed per
module here (the timing is per module).

``--method core-space`` measures Core Space merging with TSV-M inside: ours (SVDs of the stacked factors, the
merge on N*r x N*r cores) against TSV-M in full space (an SVD of each d x k update, top r triplets each, the
stacked singular vectors orthogonalized), the comparison the Core Space paper makes.

Each path runs in its own subprocess so that its peak resident memory (ru_maxrss
above the RSS after inputs are built) is its own. Only ``--layers`` of the 28
layers are measured (the layers are identical in shape); the full-model column
multiplies the per-layer time by 28.

Run:  python bench/merge.py [--method robustmerge|knots|core-space] [--layers 2] [--threads N] [--skip-dense] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from merging.core_space import core_space  # noqa: E402
from merging.knots import elect_and_average, knots, trim_threshold  # noqa: E402
from merging.lowrank import LoraFactors, truncate  # noqa: E402
from merging.robustmerge import robustmerge  # noqa: E402

HIDDEN, INTERMEDIATE, KV = 1536, 8960, 256
N_LAYERS = 28
MODULES = {
    "q_proj": (HIDDEN, HIDDEN),
    "k_proj": (KV, HIDDEN),
    "v_proj": (KV, HIDDEN),
    "o_proj": (HIDDEN, HIDDEN),
    "gate_proj": (INTERMEDIATE, HIDDEN),
    "up_proj": (INTERMEDIATE, HIDDEN),
    "down_proj": (HIDDEN, INTERMEDIATE),
}
PATHS = {"robustmerge": ("exact", "compressed", "dense"), "knots": ("knots", "knots-dense"),
         "core-space": ("core-space", "tsv-m-dense")}
DENSE = {"robustmerge": "dense", "knots": "knots-dense", "core-space": "tsv-m-dense"}


def make_experts(d: int, k: int, n: int, r: int, seed: int, device: str) -> list[LoraFactors]:
    """Trained-LoRA-like factors: Kaiming-scale A, small B, alpha = 2r."""
    g = torch.Generator().manual_seed(seed)
    return [
        LoraFactors(
            (torch.randn(r, k, generator=g) / k**0.5).to(device),
            (torch.randn(d, r, generator=g) * 0.01).to(device),
            2.0,
        )
        for _ in range(n)
    ]


def knots_dense(parts: list[LoraFactors], density: float) -> torch.Tensor:
    """KnOTS as the official code runs it, on dense updates: SVD of [dW_1 .. dW_N], TIES on the S V_n^T blocks."""
    dense = [p.dense() for p in parts]
    u, s, vh = torch.linalg.svd(torch.cat(dense, dim=1), full_matrices=False)
    rank = sum(p.rank for p in parts)
    k = dense[0].shape[1]
    blocks = [s[:rank, None] * vh[:rank, i * k : (i + 1) * k] for i in range(len(parts))]
    trimmed = []
    for b in blocks:
        threshold = trim_threshold(b, density)
        trimmed.append(b if threshold is None else torch.where(b.abs() >= threshold, b, torch.zeros_like(b)))
    majority = 1.0 if torch.sign(torch.stack(trimmed).sum(0)).sum() >= 0 else -1.0
    return u[:, :rank] @ elect_and_average(trimmed, majority)


def tsv_m_dense(parts: list[LoraFactors]) -> torch.Tensor:
    """TSV-M in full space: an SVD of each dense update, its top r triplets, the stacked vectors orthogonalized."""
    us, ss, vhs = [], [], []
    for p in parts:
        dense = p.dense()
        if dense.shape[0] < dense.shape[1]:  # LAPACK is several times slower on wide matrices: go tall
            v, s, uh = torch.linalg.svd(dense.T, full_matrices=False)
            u, vh = uh.T, v.T
        else:
            u, s, vh = torch.linalg.svd(dense, full_matrices=False)
        us.append(u[:, : p.rank])
        ss.append(s[: p.rank])
        vhs.append(vh[: p.rank])
    pu, _, qu = torch.linalg.svd(torch.cat(us, dim=1), full_matrices=False)
    pv, _, qv = torch.linalg.svd(torch.cat(vhs, dim=0), full_matrices=False)
    return (pu @ qu) @ torch.diag(torch.cat(ss)) @ (pv @ qv)


def run_path(path: str, parts: list[LoraFactors], args) -> LoraFactors | torch.Tensor:
    if path == "knots":
        return knots(parts, density=args.density, trim="module")
    if path == "knots-dense":
        return knots_dense(parts, args.density)
    if path == "core-space":
        return core_space(parts, inner="tsv-m")
    if path == "tsv-m-dense":
        return tsv_m_dense(parts)
    merged = robustmerge(parts, keep=args.keep, lam=args.lam)
    if path == "exact":
        return merged
    if path == "compressed":
        return truncate(merged, args.target_rank)[0]
    dense = merged.b @ merged.a
    # LAPACK's SVD is several times slower on wide matrices (down_proj): give the
    # dense peer the tall orientation.
    wide = dense.shape[0] < dense.shape[1]
    u, s, vh = torch.linalg.svd(dense.T if wide else dense, full_matrices=False)
    t = args.target_rank
    approx = (u[:, :t] * s[:t]) @ vh[:t]
    return approx.T if wide else approx


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(args) -> None:
    """Time one path over the measured layers; print a JSON line."""
    torch.set_num_threads(args.threads)
    inputs = {
        (layer, name): make_experts(d, k, args.experts, args.rank, seed=1000 * layer + i, device=args.device)
        for layer in range(args.layers)
        for i, (name, (d, k)) in enumerate(MODULES.items())
    }
    # Warm up first-call overheads: on CUDA every shape (cuSOLVER workspaces,
    # kernel selection), on CPU one small module.
    warmup = list(MODULES) if args.device.startswith("cuda") else ["k_proj"]
    for name in warmup:
        run_path(args.worker, inputs[(0, name)], args)
    rss_before = _rss_mib()
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base_alloc = torch.cuda.memory_allocated()
    per_module: dict[str, list[float]] = {name: [] for name in MODULES}
    for (_, name), parts in inputs.items():
        repeats = 1 if args.worker in DENSE.values() else args.repeats
        times = []
        for _ in range(repeats):
            _sync(args.device)
            start = time.perf_counter()
            out = run_path(args.worker, parts, args)
            _sync(args.device)
            times.append(time.perf_counter() - start)
            del out
        per_module[name].append(statistics.median(times))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "path": args.worker,
        "per_module_s": {name: statistics.fmean(t) for name, t in per_module.items()},
        "peak_extra_mib": peak - rss_before,
    }
    if args.device.startswith("cuda"):
        result["gpu_peak_extra_mib"] = (torch.cuda.max_memory_allocated() - base_alloc) / 2**20
    print(json.dumps(result))


def accuracy(args) -> float:
    """Relative error of our merge vs the dense path, on one k_proj (KnOTS, Core Space) or gate_proj in float64."""
    module = "gate_proj" if args.method == "robustmerge" else "k_proj"
    parts = make_experts(*MODULES[module], args.experts, args.rank, seed=7, device=args.device)
    parts = [LoraFactors(p.a.double(), p.b.double(), p.scaling) for p in parts]
    ours, dense = {"knots": ("knots", "knots-dense"), "core-space": ("core-space", "tsv-m-dense"),
                   "robustmerge": ("compressed", "dense")}[args.method]
    reference = run_path(dense, parts, args)
    mine = run_path(ours, parts, args).dense()
    return (torch.linalg.norm(mine - reference) / torch.linalg.norm(reference)).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2, help="decoder layers measured (of 28)")
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--rank", type=int, default=16, help="rank of each expert")
    parser.add_argument("--target-rank", type=int, default=16, help="rank of the compressed merge")
    parser.add_argument("--keep", type=float, default=0.2)
    parser.add_argument("--lam", type=float, default=2.0)
    parser.add_argument("--method", choices=sorted(PATHS), default="robustmerge")
    parser.add_argument("--density", type=float, default=0.2, help="KnOTS: TIES density")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the fast paths (median)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-dense", action="store_true", help="measure only the factored paths")
    parser.add_argument("--worker", choices=[p for ps in PATHS.values() for p in ps], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    dense_path = DENSE[args.method]
    paths = [p for p in PATHS[args.method] if not (args.skip_dense and p == dense_path)]
    results = {}
    for path in paths:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", path]
        for flag in ("layers", "experts", "rank", "target_rank", "keep", "lam", "repeats", "threads", "device",
                     "method", "density"):
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ}, check=False)
        if proc.returncode != 0:
            sys.exit(f"worker {path} failed:\n{proc.stderr}")
        results[path] = json.loads(proc.stdout.strip().splitlines()[-1])

    err = accuracy(args)
    n_r = args.experts * args.rank
    name = {"knots": "KnOTS-TIES", "core-space": "Core Space (TSV-M)", "robustmerge": "RobustMerge"}[args.method]
    print(
        f"{name}, {args.experts} experts of rank {args.rank}, Qwen2.5-1.5B shapes, "
        f"{args.layers} of {N_LAYERS} layers measured, device {args.device}, {args.threads} threads"
    )
    what = "gate_proj, float64): compressed vs dense truncated SVD" if args.method == "robustmerge" else \
        "k_proj, float64): factor space vs dense"
    print(f"accuracy (one {what}, relative error {err:.1e}")
    labels = {
        "exact": f"ours exact (rank {n_r})",
        "compressed": f"ours compressed (rank {args.target_rank})",
        "dense": f"dense delta + SVD (rank {args.target_rank})",
        "knots": f"ours, factor space (rank {n_r})",
        "knots-dense": f"dense concat + SVD (rank {n_r})",
        "core-space": f"ours, core space (rank {n_r})",
        "tsv-m-dense": f"TSV-M, full space (rank {n_r})",
    }
    layer_s = {p: sum(r["per_module_s"].values()) for p, r in results.items()}
    header = f"{'path':<30} {'s/layer':>10} {'28 layers (s)':>14} {'dense / this':>13} {'peak extra RSS MiB':>19}"
    if args.device.startswith("cuda"):
        header += f" {'GPU peak MiB':>13}"
    print(header)
    for p, r in results.items():
        ratio = f"{layer_s[dense_path] / layer_s[p]:.0f}x" if dense_path in layer_s else "-"
        line = (
            f"{labels[p]:<30} {layer_s[p]:>10.4f} {layer_s[p] * N_LAYERS:>14.2f} {ratio:>13} "
            f"{r['peak_extra_mib']:>19.1f}"
        )
        if "gpu_peak_extra_mib" in r:
            line += f" {r['gpu_peak_extra_mib']:>13.1f}"
        print(line)
    print("\nper module (s, mean over measured layers):")
    print(f"{'module':<10} {'shape':>11} " + " ".join(f"{p:>11}" for p in results))
    for name, (d, k) in MODULES.items():
        print(f"{name:<10} {f'{d}x{k}':>11} " + " ".join(f"{results[p]['per_module_s'][name]:>11.4f}" for p in results))


if __name__ == "__main__":
    main()
