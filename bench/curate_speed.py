"""Benchmark: curation cost against embedding cost, and every strategy at a million points.

(a) About 17,000 short reasoning-gym prompts (six tasks) go through ``curate`` with the packaged
    all-MiniLM-L6-v2: the cold embedding time (model load included) is the peer every selection
    is compared with (target: selection + metrics <= 10% of it); each strategy then reruns on the
    warm cache, and a last rerun with a fresh encoder shows what a cached rerun costs end to end.
    Diversity of each strategy is printed beside the mean of its random baselines.
(b) Each strategy picks 600 of 1,000,000 synthetic clustered 384-d unit vectors (float32). Every
    strategy runs in its own subprocess so that its peak memory (VmHWM above the RSS after the
    vectors are loaded) is its own. facility-location at this size works on an approximate kNN
    graph: each point linked to its 32 most similar candidates inside its k-means partition
    (~4,096 points, 128 seeded candidates each). The k-means backends (scikit-learn, and faiss
    when installed) are timed on the same vectors, with their inertia on a 100k-point sample.

Run from the repository root:  python -m bench.curation [--quick] [--part a|b|all]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

STRATEGIES = ["random", "full", "kmeans-centroid", "kmeans-stratified", "kcenter", "facility-location"]
TASKS = ["chain_sum", "leg_counting", "gcd", "spell_backward", "basic_arithmetic", "letter_counting"]


def make_problems(total: int, seed: int = 7):
    import reasoning_gym

    from polymath.records import Problem

    per_task = -(-total // len(TASKS))
    problems = []
    for task in TASKS:
        for i, entry in enumerate(reasoning_gym.create_dataset(task, size=per_task, seed=seed)):
            problems.append(
                Problem(id=f"{task}-{i}", domain=task, prompt=entry["question"], answer=str(entry["answer"]))
            )
    return problems[:total]


def part_a(n_texts: int, k: int, backend: str) -> None:
    from curation.config import CurateConfig
    from curation.curate import curate
    from curation.embedding import SentenceTransformerEncoder

    problems = make_problems(n_texts)
    print(
        f"\n(a) {len(problems):,} reasoning-gym prompts ({', '.join(TASKS)}), k={k}, "
        f"all-MiniLM-L6-v2 on CPU, {os.cpu_count()} cores, k-means backend {backend}"
    )
    rows, diversity = [], []
    with tempfile.TemporaryDirectory() as cache:
        encoder = SentenceTransformerEncoder()
        cold_embed = None
        for strategy in STRATEGIES:
            config = CurateConfig(strategy=strategy, k=k, kmeans_backend=backend)
            start = time.perf_counter()
            result = curate(problems, config, Path(cache), encoder=encoder)
            wall = time.perf_counter() - start
            if cold_embed is None:
                cold_embed = result.embed.seconds
                d = result.dedup
                print(
                    f"dedup: {d.n_input:,} in, {d.exact_duplicates:,} exact + {d.near_duplicates:,} near "
                    f"duplicates dropped, {d.n_kept:,} kept; cold embedding {cold_embed:.1f}s "
                    f"({result.embed.cache_misses:,} misses, {result.embed.cache_hits:,} hits)"
                )
            overhead = result.selection_seconds + result.metrics_seconds
            rows.append(
                (
                    strategy,
                    result.k,
                    result.embed.seconds,
                    result.dedup_seconds,
                    result.selection_seconds,
                    result.metrics_seconds,
                    overhead / cold_embed,
                    wall,
                )
            )
            m = result.metrics
            for metric in ("mean_coverage", "max_coverage", "vendi", "cluster_entropy"):
                ours = m[(m.strategy == strategy) & (m.metric == metric)].value.iloc[0]
                rand = m[(m.strategy == "random") & (m.metric == metric)].value.mean()
                diversity.append((strategy, metric, ours, rand))
        fresh = SentenceTransformerEncoder()
        start = time.perf_counter()
        config = CurateConfig(strategy="kmeans-centroid", k=k, kmeans_backend=backend)
        rerun = curate(problems, config, Path(cache), encoder=fresh)
        rerun_wall = time.perf_counter() - start

    print(
        f"\n{'strategy':<18} {'k':>6} {'embed s':>8} {'dedup s':>8} {'select s':>9} {'metrics s':>10} "
        f"{'(sel+met)/cold embed':>21} {'curate wall s':>14}"
    )
    for strategy, kk, emb, ded, sel, met, ratio, wall in rows:
        print(f"{strategy:<18} {kk:>6} {emb:>8.2f} {ded:>8.2f} {sel:>9.2f} {met:>10.2f} {ratio:>20.1%} {wall:>14.2f}")
    print(
        f"cached rerun (fresh encoder, kmeans-centroid): {rerun_wall:.2f}s wall vs "
        f"{cold_embed:.1f}s cold embedding; embed {rerun.embed.seconds:.2f}s, dedup {rerun.dedup_seconds:.2f}s, "
        f"select {rerun.selection_seconds:.2f}s, metrics {rerun.metrics_seconds:.2f}s, "
        f"{rerun.embed.cache_hits:,} hits, {rerun.embed.cache_misses} misses, "
        f"model loaded: {'yes' if fresh.model is not None else 'no'}"
    )

    print(f"\n{'strategy':<18} {'metric':<16} {'strategy':>9} {'random(mean)':>13} {'ratio':>7}")
    for strategy, metric, ours, rand in diversity:
        ratio = ours / rand if rand else float("nan")
        print(f"{strategy:<18} {metric:<16} {ours:>9.4f} {rand:>13.4f} {ratio:>7.2f}")


def synthetic(n: int, d: int, n_centers: int, seed: int, path: Path) -> None:
    """Unit vectors around ``n_centers`` random directions (cluster sizes vary), saved as .npy."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_centers, d)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    weights = rng.dirichlet(np.full(n_centers, 2.0))
    X = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    for lo in range(0, n, 100_000):
        hi = min(lo + 100_000, n)
        which = rng.choice(n_centers, size=hi - lo, p=weights)
        block = centers[which] + rng.standard_normal((hi - lo, d), dtype=np.float32) * np.float32(0.04)
        X[lo:hi] = block / np.linalg.norm(block, axis=1, keepdims=True)
    X.flush()
    del X


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def child(strategy: str, data: Path, k: int, seed: int, backend: str) -> None:
    from curation.clustering import fit_kmeans
    from curation.config import StrategyOptions
    from curation.diversity import nearest_selected_similarity, vendi_score
    from curation.selection import select

    X = np.load(data)
    base = _rss_kb("VmRSS:")
    start, cpu = time.perf_counter(), time.process_time()
    if strategy.startswith("k-means fit"):
        centers, _ = fit_kmeans(X, k, seed=seed, labels=False, backend=backend)
        picks = np.empty(0, dtype=np.int64)
    else:
        picks = select(strategy, X, k, seed=seed, options=StrategyOptions(kmeans_backend=backend))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = _rss_kb("VmHWM:")
    if strategy.startswith("k-means fit"):
        sample = X[np.random.default_rng(0).choice(len(X), 100_000, replace=False)]
        nearest_sq = np.maximum(
            (sample**2).sum(1)[:, None] - 2 * sample @ centers.T + (centers**2).sum(1)[None], 0
        ).min(axis=1)
        out = {
            "strategy": strategy,
            "picked": len(centers),
            "distinct": len(centers),
            "seconds": seconds,
            "cpu_seconds": cpu,
            "peak_extra_mb": (peak - base) / 1024,
            "peak_rss_mb": peak / 1024,
            "mean_coverage": float("nan"),
            "max_coverage": float("nan"),
            "vendi": float("nan"),
            "inertia": float(nearest_sq.mean()),
        }
        print("RESULT " + json.dumps(out))
        return
    coverage = 1.0 - nearest_selected_similarity(X, picks) if strategy != "full" else np.zeros(1)
    out = {
        "strategy": strategy,
        "picked": int(len(picks)),
        "distinct": int(len(np.unique(picks))),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_extra_mb": (peak - base) / 1024,
        "peak_rss_mb": peak / 1024,
        "mean_coverage": float(coverage.mean()),
        "max_coverage": float(coverage.max()),
        "vendi": vendi_score(X[picks]) if strategy != "full" else float("nan"),
    }
    print("RESULT " + json.dumps(out))


def part_b(n: int, k: int, strategies: list[str], backend: str) -> None:
    from curation.clustering import faiss_available

    d = 384
    print(
        f"\n(b) {k} of {n:,} synthetic clustered {d}-d unit vectors (float32, {n * d * 4 / 2**30:.2f} GiB), "
        f"{os.cpu_count()} cores, one subprocess per strategy, k-means backend {backend}"
    )
    runs = [(s, backend) for s in strategies] + [("k-means fit (sklearn)", "sklearn")]
    if faiss_available():
        runs.append(("k-means fit (faiss)", "faiss"))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "X.npy"
        start = time.perf_counter()
        synthetic(n, d, n_centers=2000, seed=0, path=data)
        print(f"generated in {time.perf_counter() - start:.1f}s")
        results = []
        for strategy, run_backend in runs:
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.curation",
                    "--child",
                    strategy,
                    "--data",
                    str(data),
                    "--k",
                    str(k),
                    "--kmeans-backend",
                    run_backend,
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                print(f"{strategy}: failed\n{proc.stderr[-3000:]}")
                continue
            results.append(json.loads(line[0][7:]))
            r = results[-1]
            print(f"  {strategy}: {r['seconds']:.1f}s", flush=True)
    print(
        f"\n{'strategy':<22} {'picked':>7} {'wall s':>7} {'cpu s':>7} {'x random':>9} {'peak extra MB':>14} "
        f"{'peak RSS MB':>12} {'mean cov':>9} {'max cov':>8} {'vendi':>7}"
    )
    ref = next((r["seconds"] for r in results if r["strategy"] == "random"), None)
    for r in results:
        ratio = f"{r['seconds'] / ref:>9.0f}" if ref else f"{'':>9}"
        print(
            f"{r['strategy']:<22} {r['picked']:>7} {r['seconds']:>7.1f} {r['cpu_seconds']:>7.1f} {ratio} "
            f"{r['peak_extra_mb']:>14.0f} {r['peak_rss_mb']:>12.0f} {r['mean_coverage']:>9.4f} "
            f"{r['max_coverage']:>8.4f} {r['vendi']:>7.1f}"
        )
    for r in results:
        if "inertia" in r:
            print(
                f"{r['strategy']}: k={r['picked']} centers in {r['seconds']:.1f}s, "
                f"mean squared distance to the nearest center {r['inertia']:.4f} (100k-point sample)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 texts and 100,000 vectors")
    parser.add_argument("--part", choices=["a", "b", "all"], default="all")
    parser.add_argument("--texts", type=int, help="number of prompts in (a) (default 17,000; quick 2,000)")
    parser.add_argument("--n", type=int, help="number of vectors in (b) (default 1,000,000; quick 100,000)")
    parser.add_argument("--k", type=int, default=600)
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES, choices=STRATEGIES)
    parser.add_argument("--kmeans-backend", default="auto", choices=["auto", "sklearn", "faiss"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.data, args.k, seed=0, backend=args.kmeans_backend)
        return
    if args.part in ("a", "all"):
        part_a(args.texts or (2_000 if args.quick else 17_000), args.k, args.kmeans_backend)
    if args.part in ("b", "all"):
        part_b(args.n or (100_000 if args.quick else 1_000_000), args.k, args.strategies, args.kmeans_backend)


if __name__ == "__main__":
    main()
