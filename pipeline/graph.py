"""The stage graph, expanded in one place: which stage runs a config asks for, in which order, with which inputs.

    data -> model -> curate -> train (an expert per domain) -> evaluate -> merge -> evaluate the merges

The graph unfolds in steps; a step's jobs read only runs of earlier steps, so they may run side by side.
Every caller walks this one expansion: the Prefect flows submit each step's jobs (:mod:`flows.stage_flows`),
``polymath status`` plans them without running anything (:mod:`pipeline.plan`), and the entropy experiment
builds its arms from the same job constructors (:mod:`experiments.entropy`). From a notebook::

    runs = walk(cfg, lambda step, jobs: [job.run(ws) for job in jobs])
    runs.experts[0].adapter
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.config import PolymathConfig
from polymath.workspace import MANIFEST, Workspace

from . import stages
from .curate import needs_model
from .evaluate import eval_label, evaluation_targets
from .merge import merged_label
from .stage import AdapterRef, ExpertRef, MergeRef, StageRef
from .train import expert_domains, expert_label

STEPS = ("data", "model", "curate", "train", "evaluate", "merge", "evaluate-merges")


@dataclass(frozen=True)
class Job:
    """One stage run to reuse or run: the stage, its label, its config and its keyword inputs."""

    stage: str
    label: str
    cfg: PolymathConfig
    inputs: dict[str, Any] = field(default_factory=dict)
    force: bool = False
    """Rerun even when a finished run of its key exists."""

    def run(self, ws: Workspace) -> StageRef:
        return stages()[self.stage].run(self.cfg, ws, force=self.force, **self.inputs)

    @property
    def heavy(self) -> bool:
        """Trainings, evaluations and merges: they may run in a worker process, side by side."""
        return stages()[self.stage].heavy


@dataclass(frozen=True)
class Runs:
    """The runs of a pipeline so far, step by step: what each flow hands to the next."""

    done: tuple[str, ...] = ()
    data: StageRef | None = None
    model: StageRef | None = None
    curate: StageRef | None = None
    experts: tuple[ExpertRef, ...] = ()
    evals: tuple[StageRef, ...] = ()
    merges: tuple[MergeRef, ...] = ()

    def after(self, step: str, refs: list[StageRef]) -> Runs:
        """These runs with ``step``'s results added."""
        one = refs[0] if refs else None
        added: dict[str, Any] = {
            "data": {"data": one}, "model": {"model": one}, "curate": {"curate": one},
            "train": {"experts": tuple(refs)}, "evaluate": {"evals": tuple(refs)}, "merge": {"merges": tuple(refs)},
            "evaluate-merges": {"evals": self.evals + tuple(refs)},
        }[step]
        return replace(self, done=(*self.done, step), **added)


def steps(cfg: PolymathConfig) -> tuple[str, ...]:
    """The steps in order: the model before curate when curate reads it (policy encoder, learnability probe),
    else after it, so that a curate-only run builds no model."""
    if needs_model(cfg):
        return STEPS
    return ("data", "curate", "model", *STEPS[3:])


def data_job(cfg: PolymathConfig, force: Collection[str] = ()) -> Job:
    return Job("data", "data", cfg, force="data" in force)


def model_job(cfg: PolymathConfig, data: StageRef, force: Collection[str] = ()) -> Job:
    return Job("model", "base", cfg, {"data": data}, force="model" in force)


def curate_job(cfg: PolymathConfig, data: StageRef, model: StageRef | None, label: str = "curate",
               force: Collection[str] = ()) -> Job:
    return Job("curate", label, cfg, {"data": data, "model": model}, force="curate" in force)


def train_job(cfg: PolymathConfig, runs: Runs, domain: str, label: str | None = None,
              force: Collection[str] = ()) -> Job:
    inputs = {"model": runs.model, "data": runs.data, "curate": runs.curate, "domain": domain, "label": label}
    return Job("train", expert_label(domain, label), cfg, inputs, force="train" in force)


def evaluate_job(cfg: PolymathConfig, runs: Runs, target: AdapterRef | None = None, greedy: bool = False,
                 force: bool = False) -> Job:
    inputs = {"model": runs.model, "data": runs.data, "target": target, "greedy": greedy}
    return Job("evaluate", eval_label(target, greedy), cfg, inputs, force=force)


def merge_sets(cfg: PolymathConfig, experts: tuple[ExpertRef, ...]) -> tuple[list[tuple[str | None, list]], list[str]]:
    """The expert sets to merge, (left-out domain or None, members), and why any set is skipped."""
    if len(experts) < 2:
        return [], [f"merge skipped: {len(experts)} expert(s); merging needs at least two domains"]
    sets: list[tuple[str | None, list]] = [(None, list(experts))]
    notes = []
    for left_out in cfg.merge.leave_out:
        members = [e for e in experts if e.domain != left_out]
        if len(members) < 2:
            notes.append(f"leave-one-out without {left_out} skipped: one expert is left to merge")
        else:
            sets.append((left_out, members))
    return sets, notes


def step_jobs(step: str, cfg: PolymathConfig, runs: Runs, force: Collection[str] = ()) -> list[Job] | None:
    """The jobs of ``step`` given the runs of the steps before it (None: the experts' domains are not known
    before the data stage has run, which only a plan meets)."""
    if step == "data":
        return [data_job(cfg, force)]
    if step == "model":
        return [model_job(cfg, runs.data, force)]
    if step == "curate":
        return [curate_job(cfg, runs.data, runs.model, force=force)] if cfg.curate.enabled else []
    if step == "train":
        domains = _domains(cfg, runs.data)
        return None if domains is None else [train_job(cfg, runs, d, force=force) for d in domains]
    if step == "evaluate":
        return [evaluate_job(cfg, runs, t, greedy, "evaluate" in force)
                for t, greedy in evaluation_targets(cfg, list(runs.experts))]
    if step == "merge":
        sets, _ = merge_sets(cfg, runs.experts)
        return [Job("merge", merged_label(method, left_out, seed), cfg,
                    {"model": runs.model, "data": runs.data, "curate": runs.curate, "experts": members,
                     "method": method, "left_out": left_out, "seed": seed}, force="merge" in force)
                for left_out, members in sets for method in cfg.merge.methods for seed in cfg.merge.seeds_of(method)]
    if step == "evaluate-merges":
        # A merged adapter is evaluated again whenever its merge reran, so its scores never go stale.
        again = bool({"evaluate", "merge"} & set(force))
        return [evaluate_job(cfg, runs, m, force=again) for m in runs.merges]
    raise ValueError(f"unknown step {step!r}; the steps are {', '.join(STEPS)}")


def walk(cfg: PolymathConfig, execute: Callable[[str, list[Job]], list[StageRef]], runs: Runs | None = None,
         until: str = STEPS[-1], force: Collection[str] = ()) -> Runs:
    """Run (through ``execute(step, jobs)``, results in order) every step not yet in ``runs.done``, through
    ``until``; stops early only where a plan cannot know the next step's jobs."""
    runs = runs or Runs()
    for step in steps(cfg):
        if step not in runs.done:
            jobs = step_jobs(step, cfg, runs, force)
            if jobs is None:
                return runs
            runs = runs.after(step, execute(step, jobs))
        if step == until:
            break
    return runs


def _domains(cfg: PolymathConfig, data: StageRef) -> list[str] | None:
    """The experts' domains: from the finished data run, else (a plan before the data stage ran) the config's."""
    if (data.dir / MANIFEST).exists():
        return expert_domains(cfg, data)
    if cfg.train.domains is not None:
        return list(cfg.train.domains)
    return cfg.data.static_domains()
