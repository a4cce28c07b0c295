"""The train stage: one domain expert by GRPO on the domain's curated problems."""

from __future__ import annotations

from pipeline.config import PolymathConfig
from polymath.errors import StageError
from polymath.keys import key_section
from polymath.workspace import Workspace

from .curate import curated_problems
from .data import domains, require_domains
from .model import model_dir
from .stage import ExpertRef, StageRef, key_of, ref, reusable, stage


@stage("train", code=("training", "polymath/verifiers.py"), heavy=True)
def run(
    cfg: PolymathConfig,
    ws: Workspace,
    *,
    model: StageRef,
    data: StageRef,
    curate: StageRef | None,
    domain: str,
    label: str | None = None,
    force: bool = False,
) -> ExpertRef:
    """Train the expert of ``domain``.

    ``label`` names the run in ``runs`` and its evaluations (default ``expert:<domain>``); it is not
    part of the run's key, so two labels for the same training reuse one run.
    """

    section = key_section(cfg.train)
    inputs = {"model": model.key, "data": data.key, "curate": curate.key if curate else "", "domain": domain}
    key = key_of("train", section, inputs)
    label = expert_label(domain, label)
    if done := reusable(ws, "train", key, label, force, ExpertRef, domain=domain):
        return done
    from training.expert import train_expert
    from training.launch import train_on_processes
    from polymath.verifiers import reward
    problems = [p for p in curated_problems(data, curate) if p.domain == domain]
    if not problems:
        raise StageError(f"no training problems for domain {domain!r} in the curated subset; raise curate.k")
    # resume: a killed attempt's checkpoints (train.save_steps > 0) are picked up where it stopped
    with ws.stage_run("train", key, section, inputs, resume=True) as out:
        if cfg.train.processes > 1:
            result = train_on_processes(model_dir(model), problems, cfg.train, out.tmp, domain, cfg.model.load_options())
        else:
            result = train_expert(model_dir(model), problems, reward, cfg.train, out.tmp, expert=domain,
                                  load=cfg.model.load_options())
        result.steps.assign(run_key=key).to_parquet(out.tmp / "train_steps.parquet", index=False)
        wide = result.steps.pivot_table(index="step", columns="metric", values="value")
        half = wide.iloc[len(wide) // 2 :]
        out.summary.update(
            expert=domain,
            problems=len(problems),
            initial_entropy=result.initial_entropy,
            train_seconds=round(result.seconds, 2),
            resumed_from_step=result.resumed_from_step,
            first_reward=float(wide["reward"].iloc[0]) if "reward" in wide else None,
            last_half_reward=float(half["reward"].mean()) if "reward" in half else None,
            last_half_entropy=float(half["entropy"].mean()) if "entropy" in half else None,
        )
    return ref(ws, "train", key, label, ExpertRef, domain=domain)


def expert_domains(cfg: PolymathConfig, data: StageRef) -> list[str]:
    """The domains that get an expert: ``train.domains``, else every domain of the training data."""
    if cfg.train.domains is None:
        return domains(data)
    require_domains(cfg.train.domains, data, "train.domains")
    return list(cfg.train.domains)


def expert_label(domain: str, label: str | None = None) -> str:
    """The name of a training run and its evaluations: ``label``, or ``expert:<domain>``."""
    return label or f"expert:{domain}"

