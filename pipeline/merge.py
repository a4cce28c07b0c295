"""The merge stage: one method over a set of experts, its global scale chosen on a validation split.

With ``merge.scales`` set, the method is merged at every scale of the grid and each merge is evaluated on
the validation problems of the merged experts' domains (training-split problems outside the curated subset,
``merge.validation_per_domain`` per domain, ``merge.validation_k`` samples each); the adapter kept is the
one with the best mean validation accuracy, and every point of the sweep is written to ``merge_sweep``.
The test split is evaluated later, by the evaluate stage, on the kept adapter only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from pipeline.config import PolymathConfig
from polymath.keys import key_section
from polymath.records import Problem
from polymath.workspace import Workspace

from .curate import curated_problems
from .data import test_problems, train_problems
from .model import model_dir
from .stage import ADAPTER, SAMPLING_CODE, ExpertRef, MergeRef, StageRef, key_of, log, ref, reusable, stage


def merged_label(method: str, left_out: str | None = None, seed: int | None = None) -> str:
    """``merged:<method>[-seed<s>][-without-<domain>]``: the seed when a random method runs with several, the
    domain whose expert a leave-one-out merge leaves out."""
    return f"merged:{method}" + (f"-seed{seed}" if seed is not None else "") + (f"-without-{left_out}" if left_out else "")


def validation_problems(data: StageRef, curate: StageRef | None, domains: list[str], per_domain: int
                        ) -> dict[str, list[Problem]]:
    """The last ``per_domain`` training problems of each domain that the curated subset does not hold."""
    chosen = {p.id for p in curated_problems(data, curate)} if curate is not None else set()
    by_domain: dict[str, list[Problem]] = {d: [] for d in domains}
    for p in train_problems(data):
        if p.domain in by_domain and p.id not in chosen:
            by_domain[p.domain].append(p)
    return {d: ps[-per_domain:] for d, ps in by_domain.items()}


def merge_row(report, run_key: str, label: str, scale: float | None) -> dict:
    """A MergeReport as one ``merge_runs`` row (the detailed statistics as JSON text)."""
    row = report.to_row()
    stats = {k: v for k, v in row.items() if k not in {"method", "rank", "seconds", "n_experts", "parameters_json"}}
    stats["expert_cosines"] = json.loads(stats.pop("expert_cosines_json"))
    return {
        "run_key": run_key,
        "method": row["method"],
        "label": label,
        "params": row["parameters_json"],
        "scale": scale,
        "rank": row["rank"],
        "n_experts": row["n_experts"],
        "seconds": row["seconds"],
        "mean_delta_norm": row["delta_norm_mean"],
        "mean_expert_cosine": row["cosine_mean"],
        "stats": json.dumps(stats, sort_keys=True, default=str),
    }


@stage("merge", code=("merging", "pipeline/merge.py", *SAMPLING_CODE), heavy=True)
def run(
    cfg: PolymathConfig,
    ws: Workspace,
    *,
    model: StageRef,
    data: StageRef,
    curate: StageRef | None,
    experts: list[ExpertRef],
    method: str,
    left_out: str | None = None,
    seed: int | None = None,
    force: bool = False,
) -> MergeRef:
    """Merge ``experts`` with ``method`` (``left_out``: the domain whose expert is not among them; ``seed``:
    the random method's seed, in place of ``merge.seed``)."""
    from merging.config import MergeConfig

    # the base model, its trust_remote_code and the compute device come from the model stage and the machine
    # (declared outside the key); everything else the method reads is in the section
    params = key_section(cfg.merge)
    sweep = {k: params.pop(k) for k in ("scales", "validation_per_domain", "validation_k", "sweep_params",
                                        "test_points")}
    sweep["sweep_params"] = sweep["sweep_params"].get(method)  # only this method's own entry is in its key
    params["method"] = method
    if seed is not None:
        params["seed"] = seed
    merge_cfg = MergeConfig.model_validate({**params, "base_model": str(model_dir(model)), "device": cfg.merge.device,
                                            "trust_remote_code": cfg.model.trust_remote_code})
    section = dict(params)
    if sweep["scales"]:
        # the sweep samples with every evaluate setting but these three (its own k, its own problems)
        sampling = key_section(cfg.evaluate.model_copy(update={"k": 1, "max_problems_per_benchmark": None,
                                                               "domains": None}))
        if sweep["test_points"]:
            sampling["max_problems_per_benchmark"] = cfg.evaluate.max_problems_per_benchmark
        section["sweep"] = {**{k: v for k, v in sweep.items() if v or k == "scales"}, "evaluate": sampling}
    inputs = {"model": model.key, **{e.label: e.key for e in experts}}
    if sweep["scales"]:
        inputs.update(data=data.key, curate=curate.key if curate else "")
    key = key_of("merge", section, inputs)
    label = merged_label(method, left_out, seed)
    if done := reusable(ws, "merge", key, label, force, MergeRef, method=method, left_out=left_out):
        return done
    from merging.merge import merge_adapters
    adapters = [e.adapter for e in experts]
    with ws.stage_run("merge", key, section, inputs) as out:
        point: tuple[float, float | None] | None = None
        if sweep["scales"]:
            domains = [e.domain for e in experts]
            frame = _sweep(cfg, model, data, curate, domains, adapters, merge_cfg, sweep, out.tmp / "sweep", label)
            frame.insert(0, "run_key", key)
            means = (frame[frame.split == "validation"]
                     .groupby(["scale", "param_value"], sort=False, dropna=False)["accuracy"].mean())
            point = means.idxmax()  # the first of equal bests, in grid order
            frame["chosen"] = ((frame.split == "validation") & (frame.scale == point[0])
                               & ((frame.param_value == point[1]) | frame.param_value.isna()))
            frame.to_parquet(out.tmp / "merge_sweep.parquet", index=False)
            merge_cfg = _at(merge_cfg, method, point, sweep["sweep_params"], len(adapters))
            if edges := _grid_edges(point, sweep):
                log.warning("%s: the pick %s lies on the edge of its grid; widen the grid to see past it",
                               label, ", ".join(edges))
                out.summary["grid_edge"] = edges
        report = merge_adapters(adapters, out.tmp / ADAPTER, merge_cfg)
        shutil.rmtree(out.tmp / "sweep", ignore_errors=True)
        scale = point[0] if point else None
        pd.DataFrame([merge_row(report, key, label, scale)]).to_parquet(out.tmp / "merge_runs.parquet", index=False)
        out.summary.update(method=method, label=label, left_out=left_out, seed=seed, scale=scale, rank=report.rank,
                           merge_seconds=round(report.seconds, 3))
        if point and sweep["sweep_params"]:
            out.summary["swept"] = {next(iter(sweep["sweep_params"])): point[1]}
    return ref(ws, "merge", key, label, MergeRef, method=method, left_out=left_out)


def _at(merge_cfg, method: str, point: tuple[float, float | None], param: dict[str, list[float]] | None,
        n_experts: int):
    """``merge_cfg`` at one sweep point: the second parameter set, then the scale multiplied."""
    from merging.methods import get_method

    if param:
        merge_cfg = merge_cfg.model_copy(update={next(iter(param)): point[1]})
    return get_method(method).scaled(merge_cfg, point[0], n_experts)


def _sweep(cfg: PolymathConfig, model: StageRef, data: StageRef, curate: StageRef | None, domains: list[str],
           adapters: list[Path], merge_cfg, sweep: dict, folder: Path, label: str) -> pd.DataFrame:
    """Every grid point merged and scored on validation (and on test, as a diagnostic, with ``test_points``)."""
    from merging.merge import merge_adapters

    method, param = merge_cfg.method, sweep["sweep_params"]
    name, values = next(iter(param.items())) if param else (None, [None])
    splits = {"validation": validation_problems(data, curate, domains, sweep["validation_per_domain"])}
    if sweep["test_points"]:
        test = test_problems(data)  # read once, split by domain
        splits["test"] = {d: [p for p in test if p.domain == d] for d in domains}
    rows = []
    for value in values:
        for scale in sweep["scales"]:
            where = (folder / f"{name}-{value:g}" if name else folder) / f"scale-{scale:g}"
            merge_adapters(adapters, where, _at(merge_cfg, method, (scale, value), param, len(adapters)))
            tag = f"{label}@{scale:g}" + (f",{name}={value:g}" if name else "")
            for split, problems in splits.items():
                accuracy = _validate(cfg, model, where, problems, sweep["validation_k"], tag, split == "test")
                rows += [{"label": label, "method": method, "scale": scale, "param": name, "param_value": value,
                          "split": split, "benchmark": b, "n_problems": n, "accuracy": a}
                         for b, (a, n) in accuracy.items()]
    return pd.DataFrame(rows).astype({"param_value": "float64", "param": "object"})


def _grid_edges(point: tuple[float, float | None], sweep: dict) -> list[str]:
    """Which coordinates of the pick sit at an end of a grid of more than two values."""
    edges = []
    scales = sweep["scales"]
    if len(scales) > 2 and point[0] in (min(scales), max(scales)):
        edges.append(f"scale x{point[0]:g}")
    if sweep["sweep_params"]:
        [(name, values)] = sweep["sweep_params"].items()
        if len(values) > 2 and point[1] in (min(values), max(values)):
            edges.append(f"{name} {point[1]:g}")
    return edges


def _validate(cfg: PolymathConfig, model: StageRef, adapter: Path, problems: dict[str, list[Problem]], k: int,
              label: str, test: bool = False) -> dict[str, tuple[float, int]]:
    """Mean accuracy and problem count per domain of the base model with ``adapter`` (on the test split, the
    evaluate stage's problems: its ``max_problems_per_benchmark``)."""
    from evaluation.sampling import evaluate_model
    from polymath.verifiers import score

    limit = cfg.evaluate.max_problems_per_benchmark if test else None
    config = cfg.evaluate.model_copy(update={"k": k, "max_problems_per_benchmark": limit})
    samples = evaluate_model(str(model_dir(model)), None, problems, config, score, label, "sweep",
                             adapter_dir=adapter, load=cfg.model.load_options())
    per_domain = samples.groupby("benchmark").agg(accuracy=("correct", "mean"), n=("problem_id", "nunique"))
    return {b: (float(r.accuracy), int(r.n)) for b, r in per_domain.iterrows()}
