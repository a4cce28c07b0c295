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

The experiment extends the pipeline's stage graph (pipeline/graph.py): its data, base model, curated subsets
and base evaluations are the graph's jobs, and each arm adds a train job and the evaluate job of its expert.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.config import PolymathConfig, option_errors, with_changes
from pipeline.data import require_domains
from pipeline.evaluate import GREEDY_LABEL
from pipeline.graph import Job, Runs, curate_job, data_job, evaluate_job, model_job, train_job
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
    # entropy on fixed contexts (the reference solutions), which does not move with the chains an arm samples
    "evaluate.reference_entropy": True,
}

# Data variants: curate-section changes (None: the domain's full training split, no selection).
DATA_VARIANTS: dict[str, dict[str, Any] | None] = {
    "kmeans": {},
    "random": {"curate.strategy": "random"},
    # 10 k-means clusters of ~400 problems: 100 problems come from the first one taken
    "one-cluster": {"curate.strategy": "few-clusters", "curate.n_strata": 10},
    "full": None,
}


# Clip-higher frees only the positive-advantage tokens whose ratio lies in (1.2, 1.28]; the report measures how
# many tokens the symmetric clip cuts at 1.2 in offpolicy-4 (an upper bound) before Q5 is worth its 16-update arms.
Q5_MIN_SHARE = 0.03
Q5_WHY_NOT = (f"runs only where offpolicy-4 clips at least {Q5_MIN_SHARE:.0%} of its positive-advantage tokens at the "
              "upper bound (the report's Q5 gives the measured share)")


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
    default: bool = True
    """Whether ``polymath experiment entropy`` runs it without ``--arms``."""
    why_not: str = ""
    """Why an arm outside the default run is left out (printed in the report)."""


# Targets and thresholds are relative to each run's own initial entropy, measured on 4 rollout batches of the
# untrained policy before training: the controllers act once entropy falls to 85% of its start (the adaptive
# bonus, as in the paper, once it falls at all), which plain GRPO passes within its run (report: Q1).
_INITIAL = {"train.entropy.initial_batches": 4}
_SCHEDULE_16 = {"train.updates_per_batch": 8, "train.num_iterations": 2}
_BUDGET = "outside the default run's 75-minute budget on 2 cores (run it with --arms)"

ARMS: tuple[Arm, ...] = (
    Arm("grpo", 1, "plain GRPO: no bonus, symmetric clip, every token, on-policy, 100 k-means prompts x 8 epochs"),
    Arm(
        "entropy-adaptive",
        2,
        "Skywork-OR1 controller, target = the initial entropy, c from 0 by 0.01 per step to <= 0.5",
        {
            "train.entropy.mode": "adaptive",
            "train.entropy.target": None,
            "train.entropy.target_fraction": 1.0,
            **_INITIAL,
            "train.entropy.coef": 0.0,
            "train.entropy.delta": 0.01,
            "train.entropy.c_max": 0.5,
        },
    ),
    Arm(
        "entropy-aer",
        2,
        "AER: target 85% of the initial entropy, c from 0 by 0.005 per step to <= 0.5, harder prompts more",
        {
            "train.entropy.mode": "aer",
            "train.entropy.target_fraction": 0.85,
            **_INITIAL,
            "train.entropy.coef": 0.0,
            "train.entropy.delta": 0.005,
            "train.entropy.c_max": 0.5,
        },
        default=False,
        why_not=f"a second controller for Q2, {_BUDGET}",
    ),
    Arm("entropy-fixed", 2, "constant entropy bonus 0.03", {"train.entropy.mode": "fixed", "train.entropy.coef": 0.03},
        default=False, why_not="a constant bonus is no controller, and Q2 asks whether a controller holds its target"),
    Arm("par-0.5", 3, "positive-advantage tokens weighted by lambda = 0.5", {"train.par.lambda0": 0.5},
        default=False, why_not=f"a fixed lambda between the two sign filters, {_BUDGET}"),
    Arm(
        "par-entropy-guided",
        3,
        "lambda from 1, -0.05 per step while entropy < 85% of the initial entropy, else +0.05",
        {"train.par.schedule": "entropy-guided", "train.par.lambda0": 1.0, "train.par.step": 0.05,
         "train.par.delta_fraction": 0.85, **_INITIAL},
    ),
    Arm("adv-nonneg", 3, "policy gradient on tokens with advantage >= 0 only", {"train.token_filter": "nonneg"}),
    Arm("adv-nonpos", 3, "policy gradient on tokens with advantage <= 0 only (= positive tokens weighted by 0)",
        {"train.token_filter": "nonpos"}),
    Arm("offpolicy-2", 4, "2 optimizer steps per rollout batch (its 2 halves), the same 100 batches",
        {"train.updates_per_batch": 2}, default=False, why_not=f"Q4 is answered by offpolicy-4; {_BUDGET}"),
    Arm("offpolicy-4", 4, "4 optimizer steps per rollout batch (its 4 quarters), the same 100 batches",
        {"train.updates_per_batch": 4}),
    Arm("offpolicy-16", 4, "16 optimizer steps per rollout batch (its 8 eighths, 2 passes each), the same 100 batches",
        _SCHEDULE_16, default=False, why_not="the symmetric reference of the clipping arms, which run only with them"),
    # The ratio is exactly 1 on a batch's first update, so clipping acts only from the second; the clipping
    # arms take 8 x 2 updates per batch and are judged against offpolicy-16, the same with the symmetric clip.
    Arm("clip-higher", 5, "clip range [0.8, 1.28] (DAPO), 16 updates per batch",
        {"train.eps_high": 0.28, **_SCHEDULE_16}, reference="offpolicy-16", default=False, why_not=Q5_WHY_NOT),
    Arm("clip-lower", 5, "clip range [0.72, 1.2] (the mirror of clip-higher), 16 updates per batch",
        {"train.eps_low": 0.28, **_SCHEDULE_16}, reference="offpolicy-16", default=False, why_not=Q5_WHY_NOT),
    Arm("data-full", 6, "the domain's whole training split (4,000 prompts), 800 draws: almost every prompt seen once",
        data="full"),
    Arm("data-one-cluster", 6, "100 prompts of one of 10 k-means clusters (low diversity), 8 epochs",
        data="one-cluster"),
    Arm("data-random", 6, "100 random prompts of the domain, 8 epochs", data="random",
        default=False, why_not=f"a second subset for Q6, {_BUDGET}"),
    # The newer remedies, each a training option. A miniature step has a few thousand tokens, so the
    # covariance arms select 0.2% / 1% of them (the paper's 7B-32B runs: 2e-4 / 2e-3) for a few tokens to act.
    Arm("clip-cov", 8, "Clip-Cov: the loss of a random 0.2% of tokens with covariance in (1, 5) dropped",
        {"train.policy_loss": "clip-cov", "train.cov_fraction": 0.002}, default=False, why_not=_BUDGET),
    # |logp - old logp| and its gradient are 0 on a batch's first update (measured: on-policy KL-Cov gave
    # GRPO's numbers to the last digit), so KL-Cov runs with verl's mini-batches, judged against offpolicy-4.
    Arm("kl-cov", 8, "KL-Cov: |logp - old logp| penalty (coef 1) on the 1% of tokens of largest covariance, "
        "4 updates per batch", {"train.policy_loss": "kl-cov", "train.cov_fraction": 0.01,
                                "train.updates_per_batch": 4}, reference="offpolicy-4", default=False, why_not=_BUDGET),
    Arm("high-entropy-tokens", 8, "policy gradient on the 20% highest-entropy tokens only",
        {"train.top_entropy_quantile": 0.2}, default=False, why_not=_BUDGET),
    Arm("w-reinforce", 8, "W-REINFORCE: +-1 rewards as advantages, correct samples weighted by 0.1",
        {"train.advantage": "signed", "train.par.lambda0": 0.1}, default=False, why_not=_BUDGET),
    Arm("dynamic-sampling", 8, "groups with zero reward variance dropped from the loss (DAPO, without the refill)",
        {"train.drop_zero_variance_groups": True}, default=False, why_not=_BUDGET),
)
# Arms that were removed, and why: the report lists them.
REMOVED = {
    "par-0": "the loss of adv-nonpos (tokens with advantage 0 carry no gradient), so it counted as a second "
    "confirmation of the same run",
}
ARM_NAMES = tuple(a.name for a in ARMS)
DEFAULT_ARMS = tuple(a.name for a in ARMS if a.default)
REFERENCE = {a.name: a.reference for a in ARMS}


class EntropyExperiment(BaseModel):
    """What ``polymath experiment entropy`` runs."""

    model_config = ConfigDict(extra="forbid")

    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4], min_length=1)
    """Training seeds; every arm runs once per seed, and arms are compared per seed (paired)."""
    arms: list[str] = Field(default_factory=lambda: list(DEFAULT_ARMS), min_length=1)
    """Arms to run (default: those marked default); ``grpo`` is always added, every question compares against it."""
    domain: str = "gcd"
    """The training domain; its test split is the in-domain held-out set."""
    ood_domain: str | None = "arithmetic"
    """A second demo domain every arm is also evaluated on, never trained on (Q4's out-of-domain column)."""
    k: int = Field(100, ge=1)
    """Prompts each selected data variant keeps (the paper: 616 of ~17k, many epochs)."""
    steps: int = Field(100, ge=1)
    """Rollout batches per arm: with the demo's 8 prompts per batch, the 100-prompt subset is seen 8 times and the
    full split (4,000 prompts) about once."""

    @field_validator("arms")
    @classmethod
    def _known_arms(cls, arms: list[str]) -> list[str]:
        unknown = [a for a in arms if a not in ARM_NAMES]
        if unknown:
            raise ValueError(f"unknown arms {unknown}; choose from: {', '.join(ARM_NAMES)}")
        return ["grpo", *[a for a in ARM_NAMES if a in arms and a != "grpo"]]

    @model_validator(mode="after")
    def _ood_is_another_domain(self) -> EntropyExperiment:
        if self.ood_domain == self.domain:
            raise ValueError(f"ood_domain {self.ood_domain!r} is the training domain; name another domain or none")
        return self

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds {seeds} repeat a seed; list distinct seeds, e.g. 0,1,2")
        return seeds


def experiment_from_options(
    seeds: list[int] | None = None, arms: list[str] | None = None, domain: str | None = None, k: int | None = None,
    ood_domain: str | None = None, steps: int | None = None,
) -> EntropyExperiment:
    """An EntropyExperiment from command-line or deployment options (None: the experiment's default; ood_domain
    "none": no out-of-domain evaluation); ConfigError names the bad option."""
    given = {"seeds": seeds, "arms": arms or None, "domain": domain, "k": k, "ood_domain": ood_domain, "steps": steps}
    spec: dict[str, Any] = {name: value for name, value in given.items() if value is not None}
    if spec.get("ood_domain") == "none":
        spec["ood_domain"] = None
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
    evaluated = [experiment.domain] + ([experiment.ood_domain] if experiment.ood_domain else [])
    changes = {**BASELINE, "train.steps": experiment.steps, "curate.k": experiment.k,
               "curate.domains": [experiment.domain], "evaluate.domains": evaluated}
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


def run_in_process(job: Job, ws: Workspace) -> StageRef:
    """``job``'s stage run, in this process."""
    return job.run(ws)


@dataclass(frozen=True)
class ArmJob:
    """One arm run's jobs: its training, then the evaluation of the expert it trains (built once it exists)."""

    train: Job
    runs: Runs
    """The data, base model and curated subset the training reads."""

    def evaluate(self, trained: StageRef) -> Job:
        return evaluate_job(self.train.cfg, self.runs, trained)


def arm_stages(calls: StageCalls, ws: Workspace, job: ArmJob) -> tuple[StageRef, StageRef]:
    """Train one arm run and evaluate it."""
    trained = calls.run(job.train, ws)
    return trained, calls.run(job.evaluate(trained), ws)


def longest_first(jobs: list[ArmJob]) -> list[int]:
    """The order to start ``jobs`` in when several run side by side: most optimizer passes over each rollout
    batch first, so that no long arm starts last and leaves the other workers idle at the end."""
    def passes(i: int) -> int:
        train = jobs[i].train.cfg.train
        return train.updates_per_batch * train.num_iterations

    return sorted(range(len(jobs)), key=passes, reverse=True)


def run_arms_in_turn(calls: StageCalls, ws: Workspace, jobs: list[ArmJob]) -> list[tuple[StageRef, StageRef]]:
    """Every arm run, one after another, in this process (the flow runs ``workers`` at a time instead)."""
    return [arm_stages(calls, ws, job) for job in jobs]


@dataclass
class StageCalls:
    """How the experiment runs a stage job: in this process here, as a Prefect task in the flow."""

    run: Callable[[Job, Workspace], StageRef] = run_in_process
    ingest: Callable[[Workspace, list[StageRef]], Any] = field(default=lambda ws, refs: ingest_all(ws, refs))
    arms: Callable[[StageCalls, Workspace, list[ArmJob]], list[tuple[StageRef, StageRef]]] = run_arms_in_turn
    """Runs every arm job's train and evaluate, results in order."""


def run_experiment(plan: ExperimentPlan, ws: Workspace, calls: StageCalls | None = None) -> pd.DataFrame:
    """Run (or reuse) every stage of the plan, ingest them, and return the ``experiment_arms`` rows."""
    calls = calls or StageCalls()
    base = plan.base
    runs = Runs().after("data", [calls.run(data_job(base), ws)])
    require_domains(list(base.evaluate.domains), runs.data, "--domain", error=ConfigError)
    runs = runs.after("model", [calls.run(model_job(base, runs.data), ws)])
    curates = {v: (calls.run(curate_job(c, runs.data, runs.model, label=f"curate-{v}"), ws) if c is not None else None)
               for v, c in plan.data_configs.items()}
    base_eval = calls.run(evaluate_job(base, runs), ws)
    greedy_eval = calls.run(evaluate_job(base, runs, greedy=True), ws)
    calls.ingest(ws, [runs.data, runs.model, *[c for c in curates.values() if c], base_eval, greedy_eval])
    rows = [_row("base", 0, 0, "", plan.domain, {}, "base", None, None, base_eval),
            _row(GREEDY_LABEL, 0, 0, "", plan.domain, {}, GREEDY_LABEL, None, None, greedy_eval)]
    jobs = []
    for run in plan.runs:
        arm_runs = replace(runs, curate=curates[run.arm.data])
        jobs.append(ArmJob(train_job(run.cfg, arm_runs, plan.domain, label=run.label), arm_runs))
    log.info("experiment %s: %d arm runs, %d at a time", EXPERIMENT, len(jobs), base.workers)
    for run, (trained, evaluated) in zip(plan.runs, calls.arms(calls, ws, jobs)):
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
