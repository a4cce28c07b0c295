"""The entropy findings of arXiv 2511.05993, in miniature: the arms and how they run.

Every arm is the experiment's baseline, plain GRPO, with a few config keys changed. The baseline
differs from the demo profile in three keys: no entropy bonus, a symmetric clip (0.2 / 0.2, the
paper's GRPO; DAPO's clip-higher is an arm of its own) and one training domain, gcd, whose worked
chains (Euclid's steps, then the answer) give the policy 20-84 characters to act on; the
warm-started model is right on about 40% of them. The training data is 600 of the domain's
4,000 problems chosen by kmeans-centroid, as the paper trains on 616 prompts chosen by k-means.

Arms are ordinary stage runs: a rerun reuses every finished one, and a changed arm reruns alone.

    cfg = load_config("demo")
    plan = experiment_plan(cfg, EntropyExperiment(seeds=[0]))
    rows = run_experiment(plan, Workspace("workspace"))   # stage functions, no Prefect
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline import stages
from pipeline.config import PolymathConfig, option_errors, with_changes
from pipeline.data import require_domains
from pipeline.evaluate import GREEDY_LABEL
from pipeline.ingest import ingest_all
from pipeline.stage import StageRef
from polymath.errors import ConfigError
from polymath.workspace import Workspace

log = logging.getLogger("polymath")

EXPERIMENT = "entropy"

# What the experiment changes in the profile for every arm.
BASELINE: dict[str, Any] = {
    "train.entropy.mode": "none",
    "train.entropy.coef": 0.0,
    "train.eps_low": 0.2,
    "train.eps_high": 0.2,
    "train.par.schedule": "constant",
    "train.par.lambda0": 1.0,
    "train.token_filter": "all",
    "train.num_iterations": 1,
    "train.updates_per_batch": 1,
    "train.entropy.initial_batches": 1,
    "train.policy_loss": "clip",
    "train.top_entropy_quantile": 1.0,
    "train.advantage": "grpo",
    "train.drop_zero_variance_groups": False,
    "curate.strategy": "kmeans-centroid",
    # the held-out set is the whole test split of the domain, the same prompts for every arm
    "evaluate.max_problems_per_benchmark": 250,
}

# Data variants: curate-section changes (None: the domain's full training split, no selection).
DATA_VARIANTS: dict[str, dict[str, Any] | None] = {
    "kmeans": {},
    "random": {"curate.strategy": "random"},
    # 20 k-means clusters of ~200 problems: 600 problems come from about three of them
    "few-clusters": {"curate.strategy": "few-clusters", "curate.n_strata": 20},
    "full": None,
}


@dataclass(frozen=True)
class Arm:
    """One configuration of the experiment: the baseline with ``changes`` applied."""

    name: str
    question: int
    what: str
    changes: dict[str, Any] = field(default_factory=dict)
    data: str = "kmeans"
    reference: str = "grpo"
    """The arm this one is judged against: the same update schedule without the arm's remedy."""


# The controllers' scales are the tiny model's: its gcd chains start near 0.14 nats per character, targets
# are relative to that, and the coefficients are those the demo's entropy comparison moved it with
# (docs/results.md, "Entropy control on the demo's experts").
ARMS: tuple[Arm, ...] = (
    Arm("grpo", 1, "plain GRPO: no bonus, symmetric clip, every token, on-policy, 600 k-means prompts"),
    Arm("entropy-fixed", 2, "constant entropy bonus 0.03", {"train.entropy.mode": "fixed", "train.entropy.coef": 0.03}),
    Arm(
        "entropy-adaptive",
        2,
        "Skywork-OR1 controller, target = the initial entropy (4 batches before training), c from 0 by 0.01 per "
        "step to <= 0.5",
        {
            "train.entropy.mode": "adaptive",
            "train.entropy.target": None,
            "train.entropy.target_fraction": 1.0,
            "train.entropy.initial_batches": 4,
            "train.entropy.coef": 0.0,
            "train.entropy.delta": 0.01,
            "train.entropy.c_max": 0.5,
        },
    ),
    Arm(
        "entropy-aer",
        2,
        "AER: target 70% of the initial entropy (4 batches before training), c from 0 by 0.005 per step to <= 0.5, "
        "harder prompts more",
        {
            "train.entropy.mode": "aer",
            "train.entropy.target_fraction": 0.7,
            "train.entropy.initial_batches": 4,
            "train.entropy.coef": 0.0,
            "train.entropy.delta": 0.005,
            "train.entropy.c_max": 0.5,
        },
    ),
    Arm(
        "par-0",
        3,
        "positive-advantage tokens weighted by lambda = 0 (the loss of adv-nonpos: zero-advantage tokens have no gradient)",
        {"train.par.lambda0": 0.0},
    ),
    Arm("par-0.5", 3, "positive-advantage tokens weighted by lambda = 0.5", {"train.par.lambda0": 0.5}),
    Arm(
        "par-entropy-guided",
        3,
        "lambda from 0, -0.05 per step while entropy < 0.08 nats, else +0.05 (the paper's 0.2 of 0.37, scaled to "
        "gcd's initial 0.14)",
        {"train.par.schedule": "entropy-guided", "train.par.lambda0": 0.0, "train.par.step": 0.05, "train.par.delta": 0.08},
    ),
    Arm("adv-nonneg", 3, "policy gradient on tokens with advantage >= 0 only", {"train.token_filter": "nonneg"}),
    Arm("adv-nonpos", 3, "policy gradient on tokens with advantage <= 0 only", {"train.token_filter": "nonpos"}),
    Arm("offpolicy-2", 4, "2 optimizer steps per rollout batch (its 2 halves), the same 100 batches",
        {"train.updates_per_batch": 2}),
    Arm("offpolicy-4", 4, "4 optimizer steps per rollout batch (its 4 quarters), the same 100 batches",
        {"train.updates_per_batch": 4}),
    Arm("offpolicy-16", 4, "16 optimizer steps per rollout batch (its 8 eighths, 2 passes each), the same 100 batches",
        {"train.updates_per_batch": 8, "train.num_iterations": 2}),
    # The ratio is exactly 1 on a batch's first update, so clipping acts only from the second. Measured on gcd
    # at lr 5e-4, clip-higher, 25 rollout batches, one seed (tokens clipped low + high): 4 quarters x 2 passes
    # 0.72%, 16 x 1 pass 0.71% (the tokens a step sees were not pushed by the steps before it), 4 x 3 passes
    # 1.31% in 3 passes, 8 eighths x 2 passes 1.40% in 2; a higher lr (16 x 1 at 1e-3: 1.84%) or 32 x 1 (2.2%)
    # clips more but trains worse (training reward 0.36-0.39 against 0.50 over those batches). So the clipping
    # arms take 8 x 2 and are judged against offpolicy-16, the same with the symmetric [0.8, 1.2].
    Arm("clip-higher", 5, "clip range [0.8, 1.28] (DAPO), 16 updates per batch",
        {"train.eps_high": 0.28, "train.updates_per_batch": 8, "train.num_iterations": 2}, reference="offpolicy-16"),
    Arm("clip-lower", 5, "clip range [0.72, 1.2] (the mirror of clip-higher), 16 updates per batch",
        {"train.eps_low": 0.28, "train.updates_per_batch": 8, "train.num_iterations": 2}, reference="offpolicy-16"),
    Arm("data-random", 6, "600 random prompts of the domain", data="random"),
    Arm("data-few-clusters", 6, "600 prompts from the fewest of 20 k-means clusters (low diversity)", data="few-clusters"),
    Arm("data-full", 6, "the domain's whole training split (4,000 prompts)", data="full"),
    # The newer remedies, each a training option. A miniature step has a few thousand tokens, so the
    # covariance arms select 0.2% / 1% of them (the paper's 7B-32B runs: 2e-4 / 2e-3) for a few tokens to act.
    Arm("clip-cov", 8, "Clip-Cov: the loss of a random 0.2% of tokens with covariance in (1, 5) dropped",
        {"train.policy_loss": "clip-cov", "train.cov_fraction": 0.002}),
    # |logp - old logp| and its gradient are 0 on a batch's first update (measured: on-policy KL-Cov gave
    # GRPO's numbers to the last digit), so KL-Cov runs with verl's mini-batches, judged against offpolicy-4.
    Arm("kl-cov", 8, "KL-Cov: |logp - old logp| penalty (coef 1) on the 1% of tokens of largest covariance, "
        "4 updates per batch", {"train.policy_loss": "kl-cov", "train.cov_fraction": 0.01,
                                "train.updates_per_batch": 4}, reference="offpolicy-4"),
    Arm("high-entropy-tokens", 8, "policy gradient on the 20% highest-entropy tokens only",
        {"train.top_entropy_quantile": 0.2}),
    Arm("w-reinforce", 8, "W-REINFORCE: +-1 rewards as advantages, correct samples weighted by 0.1",
        {"train.advantage": "signed", "train.par.lambda0": 0.1}),
    Arm("dynamic-sampling", 8, "groups with zero reward variance dropped from the loss (DAPO, without the refill)",
        {"train.drop_zero_variance_groups": True}),
)
ARM_NAMES = tuple(a.name for a in ARMS)
REFERENCE = {a.name: a.reference for a in ARMS}


class EntropyExperiment(BaseModel):
    """What ``polymath experiment entropy`` runs."""

    model_config = ConfigDict(extra="forbid")

    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    """Training seeds; every arm runs once per seed."""
    arms: list[str] = Field(default_factory=lambda: list(ARM_NAMES), min_length=1)
    """Arms to run (default: all); ``grpo`` is always added, every question compares against it."""
    domain: str = "gcd"
    """The training domain; its test split is the held-out set."""
    k: int = Field(600, ge=1)
    """Prompts each selected data variant keeps (the paper: 616 of ~17k)."""

    @field_validator("arms")
    @classmethod
    def _known_arms(cls, arms: list[str]) -> list[str]:
        unknown = [a for a in arms if a not in ARM_NAMES]
        if unknown:
            raise ValueError(f"unknown arms {unknown}; choose from: {', '.join(ARM_NAMES)}")
        return ["grpo", *[a for a in ARM_NAMES if a in arms and a != "grpo"]]

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds {seeds} repeat a seed; list distinct seeds, e.g. 0,1,2")
        return seeds


def experiment_from_options(
    seeds: list[int] | None = None, arms: list[str] | None = None, domain: str = "gcd", k: int = 600
) -> EntropyExperiment:
    """An EntropyExperiment from command-line or deployment options; ConfigError names the bad option."""
    spec: dict[str, Any] = {"domain": domain, "k": k}
    if seeds is not None:
        spec["seeds"] = seeds
    if arms:
        spec["arms"] = arms
    try:
        return EntropyExperiment.model_validate(spec)
    except ValidationError as exc:
        raise ConfigError(option_errors(exc) + f" (arms: {', '.join(ARM_NAMES)})") from None


@dataclass(frozen=True)
class ArmRun:
    """One arm at one seed, with the full config its stages run under."""

    arm: Arm
    seed: int
    cfg: PolymathConfig

    @property
    def label(self) -> str:
        return f"{EXPERIMENT}:{self.arm.name}:s{self.seed}"


@dataclass(frozen=True)
class ExperimentPlan:
    base: PolymathConfig
    domain: str
    data_configs: dict[str, PolymathConfig | None]
    runs: list[ArmRun]


def experiment_plan(cfg: PolymathConfig, experiment: EntropyExperiment) -> ExperimentPlan:
    """The configs of every data variant and arm run, validated before anything trains."""
    changes = {**BASELINE, "curate.k": experiment.k, "curate.domains": [experiment.domain],
               "evaluate.domains": [experiment.domain]}
    base = with_changes(cfg, changes, origin="experiment baseline")
    arms = [a for a in ARMS if a.name in experiment.arms]
    data_configs: dict[str, PolymathConfig | None] = {}
    for variant in sorted({a.data for a in arms}, key=list(DATA_VARIANTS).index):
        changes = DATA_VARIANTS[variant]
        data_configs[variant] = None if changes is None else with_changes(base, changes, origin=f"data variant {variant}")
    runs = [
        ArmRun(arm, seed, with_changes(base, {**arm.changes, "train.seed": seed}, origin=f"arm {arm.name}"))
        for arm in arms
        for seed in experiment.seeds
    ]
    return ExperimentPlan(base, experiment.domain, data_configs, runs)


def run_in_process(name: str, label: str, *args) -> StageRef:
    """Stage ``name``'s run for ``args``, in this process (``label`` names it only in the flow)."""
    return stages()[name].run(*args)


def arm_stages(calls: StageCalls, cfg, ws, model, data, curate, domain, label) -> tuple[StageRef, StageRef]:
    """Train one arm run and evaluate it."""
    trained = calls.run("train", label, cfg, ws, model, data, curate, domain, False, label)
    return trained, calls.run("evaluate", label, cfg, ws, model, data, trained)


def longest_first(jobs: list[tuple]) -> list[int]:
    """The order to start ``jobs`` in when several run side by side: most optimizer passes over each rollout
    batch first, so that no long arm starts last and leaves the other workers idle at the end."""
    def passes(i: int) -> int:
        train = jobs[i][0].train
        return train.updates_per_batch * train.num_iterations

    return sorted(range(len(jobs)), key=passes, reverse=True)


def run_arms_in_turn(calls: StageCalls, jobs: list[tuple]) -> list[tuple[StageRef, StageRef]]:
    """Every arm run, one after another, in this process (the flow runs ``workers`` at a time instead)."""
    return [arm_stages(calls, *job) for job in jobs]


@dataclass
class StageCalls:
    """How the experiment runs a stage: in this process here, as a Prefect task in the flow."""

    run: Callable[..., StageRef] = run_in_process
    """``run(name, label, *args)``: stage ``name``'s ``run(*args)``."""
    ingest: Callable[[Workspace, list[StageRef]], Any] = field(default=lambda ws, refs: ingest_all(ws, refs))
    arms: Callable[[StageCalls, list[tuple]], list[tuple[StageRef, StageRef]]] = run_arms_in_turn
    """Runs every (cfg, ws, model, data, curate, domain, label) job's train and evaluate, results in order."""


def run_experiment(plan: ExperimentPlan, ws: Workspace, calls: StageCalls | None = None) -> pd.DataFrame:
    """Run (or reuse) every stage of the plan, ingest them, and return the ``experiment_arms`` rows."""
    calls = calls or StageCalls()
    base = plan.base
    data_run = calls.run("data", "data", base, ws)
    require_domains([plan.domain], data_run, "--domain", error=ConfigError)
    base_model = calls.run("model", "base", base, ws, data_run)
    curates = {v: (calls.run("curate", f"curate-{v}", c, ws, data_run, False, base_model) if c is not None else None)
               for v, c in plan.data_configs.items()}
    base_eval = calls.run("evaluate", "base", base, ws, base_model, data_run, None)
    greedy_eval = calls.run("evaluate", GREEDY_LABEL, base, ws, base_model, data_run, None, False, True)
    calls.ingest(ws, [data_run, base_model, *[c for c in curates.values() if c], base_eval, greedy_eval])
    rows = [_row("base", 0, 0, "", plan.domain, {}, "base", None, None, base_eval),
            _row(GREEDY_LABEL, 0, 0, "", plan.domain, {}, GREEDY_LABEL, None, None, greedy_eval)]
    jobs = [(run.cfg, ws, base_model, data_run, curates[run.arm.data], plan.domain, run.label) for run in plan.runs]
    log.info("experiment %s: %d arm runs, %d at a time", EXPERIMENT, len(jobs), base.workers)
    for run, (trained, evaluated) in zip(plan.runs, calls.arms(calls, jobs)):
        calls.ingest(ws, [trained, evaluated])
        rows.append(
            _row(run.arm.name, run.arm.question, run.seed, run.arm.data, plan.domain, run.arm.changes, run.label,
                 curates[run.arm.data], trained, evaluated)
        )
    frame = pd.DataFrame(rows)
    record_arms(ws, frame)
    return frame


def _row(arm, question, seed, data, domain, changes, label, curate, train, evaluated) -> dict:
    return {
        "experiment": EXPERIMENT,
        "arm": arm,
        "question": question,
        "seed": seed,
        "data": data,
        "domain": domain,
        "changes": json.dumps(changes, sort_keys=True),
        "label": label,
        "curate_run": curate.key if curate else None,
        "train_run": train.key if train else None,
        "eval_run": evaluated.key,
    }


def record_arms(ws: Workspace, frame: pd.DataFrame) -> None:
    """Write the arm rows, replacing each arm's earlier rows (its other arms stay)."""
    from evaluation.store import Store

    store = Store(ws.db_path)
    for arm, rows in frame.groupby("arm", sort=False):
        store.replace("experiment_arms", rows.reset_index(drop=True), {"experiment": EXPERIMENT, "arm": arm})
