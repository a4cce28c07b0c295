"""The pipeline's plan without running it: every stage run, finished, stale or missing, and why.

The plan walks the pipeline's one stage graph (pipeline/graph.py), running each job with planning on: a
stage computes its key from its config, its inputs' keys and its code, and stops there. A run whose key
has a finished folder is *finished*; one without is *stale* when an earlier run of the same stage and
label exists (the plan names what differs: config keys, inputs, or the code), else *missing*. No Prefect
server starts and nothing is written.

    rows = plan_runs(load_config("demo"), Workspace("workspace"))
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import PolymathConfig
from polymath.workspace import CPU_KERNELS, MANIFEST, MKL_PATH, Workspace, package_versions

from . import train
from .graph import Job, walk
from .stage import PLANNED, StageRef, planned


@dataclass(frozen=True)
class PlannedRun:
    stage: str
    label: str
    key: str
    state: str
    """finished | partial | stale | missing"""
    why: str = ""


def _flat(obj, prefix: str = "") -> dict[str, object]:
    if isinstance(obj, dict):
        out: dict[str, object] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): obj}


def _manifest_label(stage: str, manifest: dict) -> str:
    summary = manifest.get("summary") or {}
    if summary.get("label"):
        return summary["label"]
    if stage == "train" and summary.get("expert"):
        return train.expert_label(summary["expert"])
    return {"data": "data", "curate": "curate", "model": "base"}.get(stage, "")


def _earlier_runs(ws: Workspace) -> dict[tuple[str, str], dict]:
    """The latest finished manifest per (stage, label)."""
    latest: dict[tuple[str, str], dict] = {}
    for path in sorted((ws.root / "artifacts").glob(f"*/*/{MANIFEST}")):
        manifest = ws.manifest(path.parent.parent.name, path.parent.name)
        if manifest is None:
            continue
        if manifest.get("status") != "finished":
            continue
        slot = (manifest["stage"], _manifest_label(manifest["stage"], manifest))
        if slot not in latest or manifest.get("finished_at", "") > latest[slot].get("finished_at", ""):
            latest[slot] = manifest
    return latest


def _differences(earlier: dict, config: object, inputs: dict[str, str]) -> str:
    before, now = _flat(earlier.get("config")), _flat(config)
    changed = [f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(before) | set(now))
               if before.get(k) != now.get(k)]
    moved = [name for name, key in inputs.items() if (earlier.get("inputs") or {}).get(name) != key]
    parts = []
    if changed:
        parts.append("config: " + ", ".join(changed[:4]) + (f" (+{len(changed) - 4} more)" if len(changed) > 4 else ""))
    if moved:
        parts.append("input changed: " + ", ".join(moved))
    return "; ".join(parts) or "code changed"


class _Recorder:
    """Collects each planned ref with what its key was computed from."""

    def __init__(self, ws: Workspace):
        self.ws = ws
        self.earlier = _earlier_runs(ws)
        self.computed: dict[str, tuple[object, dict[str, str]]] = {}
        self.rows: list[PlannedRun] = []

    def add(self, ref: StageRef) -> StageRef:
        if ref.skipped:
            state, why = "finished", ""
        elif self.ws.partial_dir(ref.stage, ref.key).exists():
            state, why = "partial", "an interrupted attempt left its folder: polymath run resumes it"
        elif (earlier := self.earlier.get((ref.stage, ref.label))) is not None:
            config, inputs = self.computed.get(ref.key, (None, {}))
            state, why = "stale", _differences(earlier, config, inputs)
        else:
            state, why = "missing", "never run"
        self.rows.append(PlannedRun(ref.stage, ref.label, ref.key, state, why))
        return ref


def plan_runs(cfg: PolymathConfig, ws: Workspace) -> list[PlannedRun]:
    """Every stage run the pipeline would reuse or run for ``cfg`` in ``ws``, in pipeline order."""
    rec = _Recorder(ws)

    def plan(step: str, jobs: list[Job]) -> list[StageRef]:
        return [rec.add(planned(lambda job=job: job.run(ws))) for job in jobs]

    token = PLANNED.set(rec.computed)
    try:
        runs = walk(cfg, plan)
    finally:
        PLANNED.reset(token)
    if "train" not in runs.done:
        rec.rows.append(PlannedRun("train", "expert:*", "", "missing", "the domains are known once the data stage has run"))
    return rec.rows


def version_changes(ws: Workspace, rows: list[PlannedRun]) -> list[str]:
    """Tracked packages whose installed version differs from the one a finished run of ``rows`` used, and the CPU
    kernels or MKL code path if they differ: its results may not reproduce here (requirements.lock holds the versions
    the documented figures came from; the same versions on another kernel set or MKL path give other float results)."""
    installed = package_versions()
    used: dict[str, dict[str, int]] = {}
    for row in rows:
        if row.state != "finished" or not row.key:
            continue
        for name, version in ((ws.manifest(row.stage, row.key) or {}).get("packages") or {}).items():
            if installed.get(name) != version:
                used.setdefault(name, {}).setdefault(version, 0)
                used[name][version] += 1
    def here(name: str) -> str:
        if name == CPU_KERNELS:
            return f"this machine's {name} are {installed.get(name, 'unknown')}"
        if name == MKL_PATH:
            return f"this machine's {name} is {installed.get(name, 'unknown')}"
        return f"{name} {installed.get(name, 'not installed')} is installed"

    return [f"{here(name)}; "
            + ", ".join(f"{n} finished run{'s' if n > 1 else ''} used {v}" for v, n in sorted(versions.items()))
            for name, versions in sorted(used.items())]


def memory_lines(cfg: PolymathConfig, card_gib: float | None = None) -> list[str]:
    """The training memory estimate of a GPU run (training/memory.py) against its card: this machine's first GPU,
    else ``card_gib`` (80: an H100); nothing for a CPU run or a model whose shape is not on disk here."""
    from .execution import execution_policy

    if not execution_policy(cfg).gpu or cfg.model.source != "path":
        return []
    from polymath.errors import ModelError
    from training.memory import GIB, Shape, estimate

    try:
        shape = Shape.from_folder(cfg.model.path)
    except ModelError as exc:
        return [f"no memory estimate: {exc}"]
    import torch

    card = torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else (card_gib or 80) * GIB
    dtype_bytes = 4 if cfg.model.dtype == "float32" else 2
    return estimate(shape, cfg.train, dtype_bytes, card, cfg.train.use_vllm is not False).lines()
