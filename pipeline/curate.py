"""The curate stage: a diverse subset of the training prompts, with its diversity against random subsets."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from pipeline.config import PolymathConfig
from polymath.errors import ConfigError
from polymath.records import Problem
from polymath.keys import key_section
from polymath.workspace import Workspace

from .data import require_domains, train_problems
from .model import model_dir
from .stage import SAMPLING_CODE, StageRef, key_of, ref, reusable, stage


@stage("curate", code=("curation", "pipeline/curate.py", *SAMPLING_CODE))
def run(cfg: PolymathConfig, ws: Workspace, *, data: StageRef, model: StageRef | None = None,
        force: bool = False) -> StageRef:
    """Select the curated subset. ``model`` (the base model's run) is needed by the policy encoder and the
    learnability probe, and enters the key only then."""
    from curation.curate import curate

    section = key_section(cfg.curate)
    if cfg.curate.probe_k is not None:
        # the probe samples at the training temperature with the evaluation's other settings
        section["probe_sampling"] = {"temperature": cfg.train.temperature, "evaluate": key_section(cfg.evaluate)}
    inputs = {"data": data.key}
    if needs_model(cfg):
        if model is None:
            raise ConfigError(f"curate.{'encoder: policy' if cfg.curate.encoder == 'policy' else 'probe_k'} needs "
                              "the base model: the curate stage runs after the model stage (pass its run)")
        inputs["model"] = model.key
    key = key_of("curate", section, inputs)
    if done := reusable(ws, "curate", key, "curate", force):
        return done
    problems = train_problems(data)
    if cfg.curate.domains is not None:
        require_domains(cfg.curate.domains, data, "curate.domains")
        problems = [p for p in problems if p.domain in cfg.curate.domains]
    with ws.stage_run("curate", key, section, inputs) as out:
        encoder, rates, probe_seconds = None, None, None
        if cfg.curate.encoder == "policy":
            from curation.policy_encoder import PolicyEncoder

            encoder = PolicyEncoder(model_dir(model), cfg.model.load_options())
        if cfg.curate.probe_k is not None:
            started = time.perf_counter()
            problems = _probe_sample(problems, cfg.curate.probe_max, cfg.curate.seed)
            probe = probe_pass_rates(cfg, model, problems, key)
            probe_seconds = time.perf_counter() - started
            probe.to_parquet(out.tmp / "curation_probe.parquet", index=False)
            rates = dict(zip(probe.problem_id, probe.p))
        result = curate(problems, cfg.curate, ws.cache_dir / "embeddings", encoder=encoder, pass_rates=rates)
        _write(result, key, cfg, out, probe_seconds)
    return ref(ws, "curate", key, "curate")


def needs_model(cfg: PolymathConfig) -> bool:
    """Whether the curate stage reads the base model (policy encoder or learnability probe)."""
    return cfg.curate.enabled and (cfg.curate.encoder == "policy" or cfg.curate.probe_k is not None)


def probe_pass_rates(cfg: PolymathConfig, model: StageRef, problems: list[Problem], run_key: str) -> pd.DataFrame:
    """The learnability probe: ``curate.probe_k`` completions per prompt from the base model at the training
    temperature, scored by each domain's verifier; one ``curation_probe`` row per prompt."""
    from evaluation.sampling import evaluate_model
    from polymath.verifiers import score

    by_domain: dict[str, list[Problem]] = {}
    for p in problems:
        by_domain.setdefault(p.domain, []).append(p)
    config = cfg.evaluate.model_copy(update={"k": cfg.curate.probe_k, "temperature": cfg.train.temperature,
                                             "top_p": 1.0, "max_problems_per_benchmark": None})
    samples = evaluate_model(str(model_dir(model)), None, by_domain, config, score, "probe", run_key,
                             load=cfg.model.load_options())
    probe = samples.groupby("problem_id", sort=False).agg(k=("correct", "size"), correct=("correct", "sum"))
    probe = probe.reset_index().assign(run_key=run_key)
    probe["p"] = probe["correct"] / probe["k"]
    return probe[["run_key", "problem_id", "k", "correct", "p"]].astype({"k": "int64", "correct": "int64"})


def _probe_sample(problems: list[Problem], cap: int, seed: int) -> list[Problem]:
    """At most ``cap`` problems: a seeded random pre-sample in input order (all of them when fewer)."""
    if len(problems) <= cap:
        return problems
    keep = np.sort(np.random.default_rng(seed).choice(len(problems), size=cap, replace=False))
    return [problems[i] for i in keep]


def _write(result, key: str, cfg: PolymathConfig, out, probe_seconds: float | None) -> None:
    from curation.projection import plot_projection
    from curation.selection import STRATEGIES

    result.selection.assign(run_key=key).to_parquet(out.tmp / "curation_selection.parquet", index=False)
    result.metrics.assign(run_key=key).to_parquet(out.tmp / "curation_metrics.parquet", index=False)
    plot_projection(result.embeddings, result.selected_index, out.tmp / "projection.png")
    chosen = result.metrics[result.metrics.strategy == cfg.curate.strategy]
    randoms = result.metrics[result.metrics.strategy == "random"]
    out.summary.update(
        k=result.k,
        strategy=cfg.curate.strategy,
        strategy_params=STRATEGIES[cfg.curate.strategy].parameters(cfg.curate.strategy_options()),
        encoder=cfg.curate.encoder,
        dedup=result.dedup.__dict__ if hasattr(result.dedup, "__dict__") else str(result.dedup),
        embed_seconds=round(result.embed.seconds, 2) if hasattr(result.embed, "seconds") else None,
        probe_seconds=None if probe_seconds is None else round(probe_seconds, 2),
        selection_seconds=round(result.selection_seconds, 3),
        metrics={m: float(v) for m, v in chosen.groupby("metric")["value"].mean().items()},
        random_mean={m: float(v) for m, v in randoms.groupby("metric")["value"].mean().items()},
    )


def curated_problems(data: StageRef, curate: StageRef | None) -> list[Problem]:
    """The curated subset in selection order (None: the whole training split)."""
    problems = train_problems(data)
    if curate is None:
        return problems
    ids = pd.read_parquet(curate.dir / "curation_selection.parquet").sort_values("rank")["problem_id"]
    by_id = {p.id: p for p in problems}
    return [by_id[i] for i in ids]
