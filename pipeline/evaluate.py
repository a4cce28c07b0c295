"""The evaluate stage: the base model, or base + a train/merge run's adapter, sampled and scored on the test split."""

from __future__ import annotations

from pipeline.config import PolymathConfig
from polymath.errors import StageError
from polymath.keys import key_section
from polymath.records import Problem
from polymath.workspace import Workspace

from .data import require_domains, test_problems
from .model import model_dir
from .stage import SAMPLING_CODE, AdapterRef, StageRef, key_of, ref, reusable, stage

GREEDY = "@greedy"
GREEDY_LABEL = "base" + GREEDY


def eval_label(target: AdapterRef | None, greedy: bool) -> str:
    """``base``, ``base@greedy``, a target's label, or ``<its label>@greedy``."""
    return (target.label if target else "base") + (GREEDY if greedy else "")


@stage("evaluate", code=(*SAMPLING_CODE, "evaluation/reference_entropy.py", "pipeline/evaluate.py"), heavy=True)
def run(
    cfg: PolymathConfig,
    ws: Workspace,
    *,
    model: StageRef,
    data: StageRef,
    target: AdapterRef | None = None,
    greedy: bool = False,
    force: bool = False,
) -> StageRef:
    """Evaluate the base model (target None) or what a train or merge run wrote.

    ``greedy`` evaluates by greedy decoding, one sample per problem (``base@greedy``, ``expert:<d>@greedy``):
    against each other they tell what RL taught from what sharpening the sampling distribution alone gives.
    """

    if greedy:
        cfg = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"temperature": 0.0, "k": 1})})
    elif target is None and cfg.evaluate.base_k is not None:
        cfg = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"k": cfg.evaluate.base_k})})
    section = key_section(cfg.evaluate)
    label = eval_label(target, greedy)
    inputs = {"model": model.key, "data": data.key, "target": target.key if target else "", "label": label}
    key = key_of("evaluate", section, inputs)
    if done := reusable(ws, "evaluate", key, label, force):
        return done
    from evaluation.reference_entropy import measure_reference_entropy
    from evaluation.sampling import evaluate_model
    from polymath.verifiers import score
    by_domain: dict[str, list[Problem]] = {}
    if cfg.evaluate.domains is not None:
        require_domains(cfg.evaluate.domains, data, "evaluate.domains")
    for p in test_problems(data):
        if cfg.evaluate.domains is None or p.domain in cfg.evaluate.domains:
            by_domain.setdefault(p.domain, []).append(p)
    if not by_domain:
        raise StageError(f"{data.dir}: the data has no test problems; set data.test_fraction or data.test_path")
    # a fully fine-tuned expert is a model of its own; a LoRA expert or a merge is an adapter on the base
    whole = target.full_model if target is not None else None
    adapter = target.adapter if target is not None and whole is None else None
    with ws.stage_run("evaluate", key, section, inputs) as out:
        samples = evaluate_model(
            str(whole or model_dir(model)), None, by_domain, cfg.evaluate, score, label, key,
            adapter_dir=adapter, load=cfg.model.load_options(),
        )
        samples.to_parquet(out.tmp / "eval_samples.parquet", index=False)
        if cfg.evaluate.reference_entropy:
            measure_reference_entropy(
                whole or model_dir(model), by_domain, cfg.evaluate, label, key, adapter_dir=adapter,
                load=cfg.model.load_options(),
            ).to_parquet(out.tmp / "eval_reference_entropy.parquet", index=False)
        acc = samples.groupby("benchmark")["correct"].mean()
        out.summary.update(label=label, accuracy={b: round(float(a), 4) for b, a in acc.items()})
    return ref(ws, "evaluate", key, label)


def evaluation_targets(cfg: PolymathConfig, experts: list[AdapterRef]) -> list[tuple[AdapterRef | None, bool]]:
    """(target, greedy) of the evaluate step, in order: the base sampled and greedy, then each expert sampled
    and, with ``evaluate.greedy_experts``, greedy."""
    jobs: list[tuple[AdapterRef | None, bool]] = []
    if cfg.evaluate.include_base:
        jobs.append((None, False))
    if cfg.evaluate.greedy_base:
        jobs.append((None, True))
    for expert in experts:
        jobs += [(expert, False)] + ([(expert, True)] if cfg.evaluate.greedy_experts else [])
    return jobs
