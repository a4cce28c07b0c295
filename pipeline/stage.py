"""What every stage module shares: the stage declaration, the finished-run reference, keys and reuse.

A stage module (``pipeline/data.py``, ``curate.py``, ...) declares itself once::

    @stage("curate", code=("curation",))
    def run(cfg, ws, *, data: StageRef, model: StageRef | None = None, force: bool = False) -> StageRef: ...

``run`` takes the config and the workspace, then its inputs by keyword only (the upstream runs it reads and
what tells its runs apart, such as a domain), and returns a typed reference to the run. It computes its
content-addressed key from its config section, its inputs' keys and the digest of ``code`` (the stage
package, plus the ground-floor modules every stage shares), returns at once when a finished run with that key
exists (unless ``force``), and otherwise writes its outputs atomically. The declarations form the ``STAGES``
registry that the stage graph (:mod:`pipeline.graph`) runs its jobs through.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polymath.errors import PolymathError, StageError
from polymath.registry import Registry
from polymath.workspace import ADAPTER, FULL_MODEL, FinishedMeanwhile, Workspace, source_digest, stage_key

log = logging.getLogger("polymath")

#: The ground floor every stage reads through (records, prompts, answers, text, loading): in every key.
SHARED_CODE = ("polymath/records.py", "polymath/prompting.py", "polymath/answers.py", "polymath/text.py",
               "polymath/loading.py", "polymath/decoding.py")
#: The code that samples and scores completions (evaluate, the curate probe, the merge scale sweep): generation,
#: scoring and the sample files, not the store or the report, which read the samples and change no run.
SAMPLING_CODE = (*(f"evaluation/{m}.py" for m in ("sampling", "config", "hf_engine", "vllm_engine", "metrics",
                                                   "samples", "schema")), "polymath/verifiers.py")


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: its name and the code its key depends on (its inputs are its ``run``'s keywords)."""

    name: str
    code: tuple[str, ...]
    run: Callable[..., StageRef]
    heavy: bool = False
    """Runs of it may go to a worker process (trainings, evaluations, merges); the light ones run in the flow's."""


STAGES: Registry[Stage] = Registry("stage")


def stage(name: str, code: tuple[str, ...] = (), heavy: bool = False):
    """Declare ``run`` as the stage ``name`` (registered in ``STAGES``)."""

    def declare(run: Callable[..., StageRef]) -> Callable[..., StageRef]:
        run = reuse_when_finished_meanwhile(run)
        STAGES.add(name, Stage(name, (*code, *SHARED_CODE), run, heavy))
        return run

    return declare


def reuse_when_finished_meanwhile(run: Callable[..., StageRef]) -> Callable[..., StageRef]:
    """``run`` once more when another process finished its key while it waited for the key's lock: the second
    call finds that run finished and returns it (reused), so the work is never done twice."""

    @functools.wraps(run)
    def once_per_key(*args, **kwargs) -> StageRef:
        try:
            return run(*args, **kwargs)
        except FinishedMeanwhile as done:
            log.info("%s %s: finished by another process while this one waited; reusing it", done.stage, done.key)
            return run(*args, **kwargs)

    return once_per_key


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


@dataclass(frozen=True)
class AdapterRef(StageRef):
    """A train or merge run: a peft adapter on the base model, or (a full fine-tune) a model of its own."""

    @property
    def adapter(self) -> Path:
        return self.dir / ADAPTER

    @property
    def full_model(self) -> Path | None:
        """The whole fine-tuned model (``train.lora.full_finetune``); None for an adapter run."""
        folder = self.dir / FULL_MODEL
        return folder if (folder / "config.json").exists() else None


@dataclass(frozen=True)
class ExpertRef(AdapterRef):
    """A train run: the expert of one domain."""

    domain: str = ""


@dataclass(frozen=True)
class MergeRef(AdapterRef):
    """A merge run: one method over a set of experts (``left_out``: the domain whose expert is not among them)."""

    method: str = ""
    left_out: str | None = None


#: While planning (pipeline/plan.py), a stage function stops at its key: a run that is not finished comes back
#: as a ref to a folder that does not exist yet, and nothing runs.
PLANNING = ContextVar("polymath_planning", default=False)
#: While planning: key -> (config section, inputs) it was computed from, to say what changed.
PLANNED: ContextVar[dict[str, tuple[Any, dict[str, str]]] | None] = ContextVar("polymath_planned", default=None)


def reusable(ws: Workspace, name: str, key: str, label: str, force: bool, kind: type[StageRef] = StageRef,
             **fields: Any) -> StageRef | None:
    """The finished run of ``key`` as a ``kind`` reference (None: it has to run); while planning, a reference
    whether it is finished or not."""
    if not force and ws.is_finished(name, key):
        if not PLANNING.get():
            log.info("%s %s: finished run %s reused", name, label, key)
        return kind(name, key, ws.stage_dir(name, key), label, skipped=True, **fields)
    if PLANNING.get():
        return kind(name, key, ws.stage_dir(name, key), label, **fields)
    return None


def planned(run: Callable[[], StageRef]) -> StageRef:
    """``run()`` with planning on: its reference, whether its key is finished (``skipped``) or not, and nothing
    run."""
    token = PLANNING.set(True)
    try:
        return run()
    finally:
        PLANNING.reset(token)


def key_of(name: str, section: Any, inputs: dict[str, str]) -> str:
    """The run key of stage ``name``: its config section, upstream keys and declared code."""
    key = stage_key(name, section, inputs, source_digest(*STAGES[name].code))
    if (planned := PLANNED.get()) is not None:
        planned[key] = (section, inputs)
    return key


@functools.cache
def _fingerprints(cache_file: Path):
    """One digest cache per workspace and process: the plan and every stage reuse it instead of rereading it."""
    from polymath.fingerprint import Fingerprints

    return Fingerprints(cache_file)


def file_inputs(ws: Workspace, paths: list[str | Path]) -> dict[str, str]:
    """``{"file:<path>": content digest}`` for the local files and folders a stage reads (paths that do not
    exist, such as a dataset name on a hub, are left to the stage to report): a changed file changes the key,
    and ``polymath status`` names it."""
    prints = _fingerprints(ws.cache_dir / "fingerprints.json")
    return {f"file:{Path(p).resolve()}": prints.of(p) for p in paths if p and Path(p).exists()}


def ref(ws: Workspace, name: str, key: str, label: str, kind: type[StageRef] = StageRef, **fields: Any) -> StageRef:
    return kind(name, key, ws.stage_dir(name, key), label, **fields)


def progress(what: str):
    """A throttled logger for long loops."""
    state = {"last": 0.0}

    def report(step: int, total: int, loss: float) -> None:
        now = time.perf_counter()
        if step == total or now - state["last"] > 10:
            state["last"] = now
            log.info("%s: step %d/%d loss %.3f", what, step, total, loss)

    return report


def run_guarded(name: str, label: str, fn, *args, **kwargs):
    """Run a stage; a failure becomes a StageError naming the stage and the cause."""
    try:
        return fn(*args, **kwargs)
    except StageError:
        raise
    except PolymathError as exc:
        raise StageError(f"stage {name} ({label}) failed: {exc}") from exc
    except Exception as exc:
        raise StageError(f"stage {name} ({label}) failed: {type(exc).__name__}: {exc}") from exc
