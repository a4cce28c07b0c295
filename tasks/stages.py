"""The pipeline's stage runs, without an orchestrator.

Each function takes the validated config and a :class:`Workspace`, computes
its content-addressed key from the upstream keys, its config section and the
code version, returns at once when a finished run with that key exists (unless
``force``), and otherwise writes its outputs atomically. ``ingest`` loads a
finished run's parquet files into DuckDB (one transaction per table, replacing
that run's rows). The Prefect tasks in :mod:`tasks.prefect_tasks` wrap these.
"""

from __future__ import annotations

import json
import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from curation.records import Problem
from polymath.config import PolymathConfig
from polymath.errors import PolymathError, StageError
from polymath.workspace import Workspace, source_digest, stage_key

log = logging.getLogger("polymath")


@dataclass(frozen=True)
class StageRef:
    """A finished stage run: where it lives and what it is."""

    stage: str
    key: str
    dir: Path
    label: str
    skipped: bool = False

    def manifest(self) -> dict:
        return json.loads((self.dir / "manifest.json").read_text())


#: While planning (tasks/plan.py), a stage function stops at its key: a run that is not finished comes back
#: as a ref to a folder that does not exist yet, and nothing runs.
PLANNING = ContextVar("polymath_planning", default=False)
#: While planning: key -> (config section, inputs) it was computed from, to say what changed.
PLANNED: ContextVar[dict[str, tuple[Any, dict[str, str]]] | None] = ContextVar("polymath_planned", default=None)


def _finished(ws: Workspace, stage: str, key: str, label: str, force: bool) -> StageRef | None:
    if not force and ws.is_finished(stage, key):
        if not PLANNING.get():
            log.info("%s %s: finished run %s reused", stage, label, key)
        return StageRef(stage, key, ws.stage_dir(stage, key), label, skipped=True)
    if PLANNING.get():
        return StageRef(stage, key, ws.stage_dir(stage, key), label)
    return None


def reused(fn, *args) -> StageRef | None:
    """The finished run ``fn(*args)`` would reuse, found without running it (None: it has to run)."""
    token = PLANNING.set(True)
    try:
        ref = fn(*args)
    finally:
        PLANNING.reset(token)
    return ref if ref.skipped else None


def _key(stage: str, section: Any, inputs: dict[str, str], *code: str) -> str:
    key = stage_key(stage, section, inputs, source_digest(*code))
    if (planned := PLANNED.get()) is not None:
        planned[key] = (section, inputs)
    return key


# ---------------------------------------------------------------- problems on disk


def write_problems(problems: list[Problem], path: Path) -> None:
    frame = pd.DataFrame(
        {
            "id": [p.id for p in problems],
            "domain": [p.domain for p in problems],
            "prompt": [p.prompt for p in problems],
            "answer": [p.answer for p in problems],
            "solution": [p.solution for p in problems],
            "metadata": [json.dumps(p.metadata, default=str) for p in problems],
        }
    )
    frame.to_parquet(path, index=False)


def read_problems(path: Path) -> list[Problem]:
    frame = pd.read_parquet(path)
    return [
        Problem(
            id=r.id, domain=r.domain, prompt=r.prompt, answer=r.answer, metadata=json.loads(r.metadata),
            solution=getattr(r, "solution", None),
        )
        for r in frame.itertuples(index=False)
    ]


# ---------------------------------------------------------------- data


def data_stage(cfg: PolymathConfig, ws: Workspace, force: bool = False) -> StageRef:
    from curation.data import load_problems

    section = cfg.data.model_dump(mode="json")
    key = _key("data", section, {}, "curation/data.py", "curation/domains.py", "curation/records.py", "curation/traces.py")
    if ref := _finished(ws, "data", key, "data", force):
        return ref
    with ws.stage_run("data", key, section, {}) as run:
        problems = load_problems(cfg.data)
        write_problems(problems.train, run.tmp / "train.parquet")
        write_problems(problems.test, run.tmp / "test.parquet")
        run.summary.update(
            source=problems.source,
            rows_read=problems.rows_read,
            duplicates_dropped=problems.duplicates_dropped,
            train=len(problems.train),
            test=len(problems.test),
            domains={d: len(v) for d, v in problems.by_domain("train").items()},
        )
    return StageRef("data", key, ws.stage_dir("data", key), "data")


def train_problems(data: StageRef) -> list[Problem]:
    return read_problems(data.dir / "train.parquet")


def test_problems(data: StageRef) -> list[Problem]:
    return read_problems(data.dir / "test.parquet")


# ---------------------------------------------------------------- curate


def curate_stage(cfg: PolymathConfig, ws: Workspace, data: StageRef, force: bool = False) -> StageRef:
    from curation.curate import curate
    from curation.projection import plot_projection

    section = cfg.curate.model_dump(mode="json")
    inputs = {"data": data.key}
    key = _key("curate", section, inputs, "curation")
    if ref := _finished(ws, "curate", key, "curate", force):
        return ref
    problems = train_problems(data)
    if cfg.curate.domains is not None:
        require_domains(cfg.curate.domains, data, "curate.domains")
        problems = [p for p in problems if p.domain in cfg.curate.domains]
    with ws.stage_run("curate", key, section, inputs) as run:
        result = curate(problems, cfg.curate, ws.cache_dir / "embeddings")
        selection = result.selection.assign(run_key=key)
        selection.to_parquet(run.tmp / "curation_selection.parquet", index=False)
        result.metrics.assign(run_key=key).to_parquet(run.tmp / "curation_metrics.parquet", index=False)
        plot_projection(result.embeddings, result.selected_index, run.tmp / "projection.png")
        chosen = result.metrics[result.metrics.strategy == cfg.curate.strategy]
        randoms = result.metrics[result.metrics.strategy == "random"]
        run.summary.update(
            k=result.k,
            strategy=cfg.curate.strategy,
            dedup=result.dedup.__dict__ if hasattr(result.dedup, "__dict__") else str(result.dedup),
            embed_seconds=round(result.embed.seconds, 2) if hasattr(result.embed, "seconds") else None,
            selection_seconds=round(result.selection_seconds, 3),
            metrics={m: float(v) for m, v in chosen.groupby("metric")["value"].mean().items()},
            random_mean={m: float(v) for m, v in randoms.groupby("metric")["value"].mean().items()},
        )
    return StageRef("curate", key, ws.stage_dir("curate", key), "curate")


def curated_problems(data: StageRef, curate: StageRef | None) -> list[Problem]:
    problems = train_problems(data)
    if curate is None:
        return problems
    ids = pd.read_parquet(curate.dir / "curation_selection.parquet").sort_values("rank")["problem_id"]
    by_id = {p.id: p for p in problems}
    return [by_id[i] for i in ids]


# ---------------------------------------------------------------- model


def model_stage(cfg: PolymathConfig, ws: Workspace, data: StageRef, force: bool = False) -> StageRef:
    """The base model folder: bootstrapped (tiny), converted (smollm) or referenced (path)."""
    from training.models import bootstrap_tiny, convert_gguf, smollm_gguf_path

    section = cfg.model.model_dump(mode="json")
    inputs = {"data": data.key} if cfg.model.source == "tiny" else {}
    if cfg.model.source != "tiny":
        section.pop("tiny")
    key = _key(
        "model", section, inputs, "training/models.py", "training/warm_start.py", "training/prompting.py",
        "training/verifiers.py", "evaluation/hf_engine.py",
    )
    if ref := _finished(ws, "model", key, "base", force):
        return ref
    with ws.stage_run("model", key, section, inputs) as run:
        out = run.tmp / "model"
        if cfg.model.source == "tiny":
            summary = bootstrap_tiny(
                train_problems(data), cfg.model.tiny, out, progress=_progress("warm start"), sampler=_probe_sampler
            )
        elif cfg.model.source == "smollm":
            gguf = smollm_gguf_path()
            convert_gguf(gguf, out)
            summary = {"gguf": gguf.name}
        else:
            from training.models import load_model

            load_model(cfg.model.path, cfg.model.trust_remote_code)  # fail early on a bad folder
            (run.tmp / "model_path.txt").write_text(str(Path(cfg.model.path).resolve()))
            summary = {"path": str(Path(cfg.model.path).resolve())}
        run.summary.update(summary)
    return StageRef("model", key, ws.stage_dir("model", key), "base")


def _probe_sampler(model, tokenizer, prompts: list[str], samples: int, max_new_tokens: int, seed: int):
    """The warm start's band check sampled like the evaluation: each row dropped at its EOS."""
    from evaluation.config import EvalConfig
    from evaluation.hf_engine import hf_generate

    config = EvalConfig(k=samples, temperature=1.0, max_new_tokens=max_new_tokens, batch_size=len(prompts))
    return [[s.text for s in group] for group in hf_generate(model, tokenizer, prompts, config, seed=seed)]


def model_dir(model: StageRef) -> Path:
    pointer = model.dir / "model_path.txt"
    return Path(pointer.read_text().strip()) if pointer.exists() else model.dir / "model"


# ---------------------------------------------------------------- train


def require_domains(wanted: list[str], data: StageRef, option: str, error: type[PolymathError] = StageError) -> None:
    """Raise ``error`` naming ``option``, the missing domains and the available ones, unless the
    training data has every domain in ``wanted``."""
    available = sorted(data.manifest()["summary"]["domains"])
    missing = [d for d in wanted if d not in available]
    if missing:
        raise error(f"{option} names {missing}, which the training data does not have; available: {available}")


def expert_domains(cfg: PolymathConfig, data: StageRef) -> list[str]:
    if cfg.train.domains is None:
        return sorted(data.manifest()["summary"]["domains"])
    require_domains(cfg.train.domains, data, "train.domains")
    return list(cfg.train.domains)


def expert_label(domain: str, label: str | None = None) -> str:
    """The name of a training run and its evaluations: ``label``, or ``expert:<domain>``."""
    return label or f"expert:{domain}"


def train_stage(
    cfg: PolymathConfig,
    ws: Workspace,
    model: StageRef,
    data: StageRef,
    curate: StageRef | None,
    domain: str,
    force: bool = False,
    label: str | None = None,
) -> StageRef:
    """Train one domain expert by GRPO on the domain's curated problems.

    ``label`` names the run in ``runs`` and its evaluations (default ``expert:<domain>``); it is not
    part of the run's key, so two labels for the same training reuse one run.
    """
    from training.expert import train_expert
    from training.verifiers import reward

    section = cfg.train.model_dump(mode="json")
    section.pop("domains")
    section.pop("show_progress", None)
    section.pop("report_to", None)  # where the logs also go, not what is trained
    inputs = {"model": model.key, "data": data.key, "curate": curate.key if curate else "", "domain": domain}
    key = _key("train", section, inputs, "training")
    label = expert_label(domain, label)
    if ref := _finished(ws, "train", key, label, force):
        return ref
    problems = [p for p in curated_problems(data, curate) if p.domain == domain]
    if not problems:
        raise StageError(f"no training problems for domain {domain!r} in the curated subset; raise curate.k")
    # resume: a killed attempt's checkpoints (train.save_steps > 0) are picked up where it stopped
    with ws.stage_run("train", key, section, inputs, resume=True) as run:
        result = train_expert(model_dir(model), problems, reward, cfg.train, run.tmp, expert=domain)
        steps = result.steps.assign(run_key=key)
        steps.to_parquet(run.tmp / "train_steps.parquet", index=False)
        wide = result.steps.pivot_table(index="step", columns="metric", values="value")
        half = wide.iloc[len(wide) // 2 :]
        run.summary.update(
            expert=domain,
            problems=len(problems),
            initial_entropy=result.initial_entropy,
            train_seconds=round(result.seconds, 2),
            resumed_from_step=result.resumed_from_step,
            first_reward=float(wide["reward"].iloc[0]) if "reward" in wide else None,
            last_half_reward=float(half["reward"].mean()) if "reward" in half else None,
            last_half_entropy=float(half["entropy"].mean()) if "entropy" in half else None,
        )
    return StageRef("train", key, ws.stage_dir("train", key), label)


def adapter_dir(ref: StageRef) -> Path:
    return ref.dir / "adapter"


# ---------------------------------------------------------------- evaluate


GREEDY_LABEL = "base@greedy"


def evaluate_stage(
    cfg: PolymathConfig,
    ws: Workspace,
    model: StageRef,
    data: StageRef,
    target: StageRef | None,
    force: bool = False,
    greedy: bool = False,
) -> StageRef:
    """Evaluate the base model (target None) or base + the adapter of a train/merge run.

    ``greedy`` evaluates the base model by greedy decoding, one sample per problem (``base@greedy``): the
    control that tells what RL taught from what sharpening the sampling distribution alone would give.
    """
    from evaluation.sampling import evaluate_model
    from training.verifiers import score

    if greedy:
        if target is not None:
            raise StageError("greedy evaluation is the base model's control; it takes no adapter")
        cfg = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"temperature": 0.0, "k": 1})})
    elif target is None and cfg.evaluate.base_k is not None:
        cfg = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"k": cfg.evaluate.base_k})})
    # Which models are evaluated is the flow's business, not part of one evaluation's identity.
    section = cfg.evaluate.model_dump(mode="json", exclude={"include_base", "greedy_base", "base_k"})
    label = target.label if target else (GREEDY_LABEL if greedy else "base")
    inputs = {"model": model.key, "data": data.key, "target": target.key if target else "", "label": label}
    key = _key("evaluate", section, inputs, "evaluation", "training/verifiers.py", "training/prompting.py")
    if ref := _finished(ws, "evaluate", key, label, force):
        return ref
    by_domain: dict[str, list[Problem]] = {}
    for p in test_problems(data):
        by_domain.setdefault(p.domain, []).append(p)
    if not by_domain:
        raise StageError(f"{data.dir}: the data has no test problems; set data.test_fraction or data.test_path")
    with ws.stage_run("evaluate", key, section, inputs) as run:
        samples = evaluate_model(
            str(model_dir(model)),
            None,
            by_domain,
            cfg.evaluate,
            score,
            label,
            key,
            adapter_dir=adapter_dir(target) if target is not None else None,
        )
        samples.to_parquet(run.tmp / "eval_samples.parquet", index=False)
        acc = samples.groupby("benchmark")["correct"].mean()
        run.summary.update(label=label, accuracy={b: round(float(a), 4) for b, a in acc.items()})
    return StageRef("evaluate", key, ws.stage_dir("evaluate", key), label)


# ---------------------------------------------------------------- ingest


TABLE_FILES = {
    "curation_selection": "run_key",
    "curation_metrics": "run_key",
    "train_steps": "run_key",
    "eval_samples": "eval_run",
    "merge_runs": "run_key",
    "merge_sweep": "run_key",
}


def ingest(ws: Workspace, ref: StageRef) -> dict[str, int]:
    """Load a finished run's tables into DuckDB, replacing that run's earlier rows."""
    from evaluation.store import Store

    # Store.replace creates the schema when it is missing: no separate schema pass per run.
    store = Store(ws.db_path)
    counts: dict[str, int] = {}
    for table, key_column in TABLE_FILES.items():
        path = ref.dir / f"{table}.parquet"
        if path.exists():
            counts[table] = store.replace(table, pd.read_parquet(path), {key_column: ref.key})
    m = ref.manifest()
    runs_row = pd.DataFrame(
        [
            {
                "stage": ref.stage,
                "run_key": ref.key,
                "label": ref.label,
                "config": json.dumps(m.get("config"), sort_keys=True),
                "status": m.get("status"),
                "started_at": pd.Timestamp(m["started_at"]).tz_convert(None),
                "finished_at": pd.Timestamp(m["finished_at"]).tz_convert(None),
                "seconds": m.get("seconds"),
                "artifact_dir": str(ref.dir),
                "inputs": json.dumps(m.get("inputs"), sort_keys=True),
            }
        ]
    )
    store.replace("runs", runs_row, {"stage": ref.stage, "run_key": ref.key})
    return counts


def _already_ingested(ws: Workspace, refs: list[StageRef]) -> set[tuple[str, str]]:
    """(stage, run_key) of the reused runs whose ``runs`` row matches their manifest: their rows are in DuckDB
    (``ingest`` writes the ``runs`` row last, so a run cut off mid-ingest is not among them)."""
    from evaluation.store import Store

    reused = [r for r in refs if r.skipped]
    if not reused or not ws.db_path.exists():
        return set()
    keys = ", ".join(f"'{r.key}'" for r in reused)
    try:
        rows = Store(ws.db_path).query(f"SELECT stage, run_key, finished_at FROM runs WHERE run_key IN ({keys})")
    except PolymathError:  # no runs table yet: ingest everything
        return set()
    recorded = {(r.stage, r.run_key): r.finished_at for r in rows.itertuples(index=False)}
    done = set()
    for ref in reused:
        finished = pd.Timestamp(ref.manifest()["finished_at"]).tz_convert(None)
        if recorded.get((ref.stage, ref.key)) == finished:
            done.add((ref.stage, ref.key))
    return done


def ingest_all(ws: Workspace, refs: list[StageRef]) -> dict[str, int]:
    """Ingest finished runs one by one (a reused run already in DuckDB is skipped), then refresh the derived
    comparisons once if an evaluation was ingested."""
    from evaluation.store import Store

    done = _already_ingested(ws, refs)
    fresh = [r for r in refs if (r.stage, r.key) not in done]
    totals: dict[str, int] = {}
    for ref in fresh:
        for table, n in ingest(ws, ref).items():
            totals[table] = totals.get(table, 0) + n
    if any(ref.stage == "evaluate" for ref in fresh):
        totals["eval_comparisons"] = Store(ws.db_path).refresh_comparisons()
    return totals


# ---------------------------------------------------------------- progress


def _progress(what: str):
    """A throttled logger for long loops (a rich bar when attached to a terminal)."""
    state = {"last": 0.0}

    def report(step: int, total: int, loss: float) -> None:
        now = time.perf_counter()
        if step == total or now - state["last"] > 10:
            state["last"] = now
            log.info("%s: step %d/%d loss %.3f", what, step, total, loss)

    return report


def run_guarded(stage: str, label: str, fn, *args, **kwargs):
    """Run a stage; a failure becomes a StageError naming the stage and the cause."""
    try:
        return fn(*args, **kwargs)
    except StageError:
        raise
    except PolymathError as exc:
        raise StageError(f"stage {stage} ({label}) failed: {exc}") from exc
    except Exception as exc:
        raise StageError(f"stage {stage} ({label}) failed: {type(exc).__name__}: {exc}") from exc
