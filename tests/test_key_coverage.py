"""Every config field a stage reads is in its key: checked, not hand-kept.

The micro pipeline runs stage by stage (the plan's own expansion, for real) while every pydantic attribute read
on the config, or on a copy made from it, is recorded with its dotted path. Then each field a stage read is
changed to another valid value, one at a time, and the plan is computed again: the key of that stage run must
change (through its own section, or through an upstream run's key). A field declared outside the key
(``NOT_IN_KEY``: where output goes, which runs a flow starts) is exempt; a field with no other valid value to
try (free text, lists) is reported, not failed.
"""

from __future__ import annotations

import typing
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from pipeline.graph import walk
from pipeline.config import PolymathConfig, field_annotation, load_config, with_changes
from pipeline.plan import plan_runs
from polymath.errors import ConfigError
from polymath.keys import in_key
from polymath.workspace import Workspace


class ReadRecorder:
    """Dotted paths of the config fields read, on the config's models and on copies made from them."""

    def __init__(self):
        self.paths: dict[int, str] = {}
        self.replaced: dict[int, set[str]] = {}  # fields a copy got from ``update``, not from the config
        self.keep: list[Any] = []  # registered objects stay alive, so their ids are not reused
        self.read: set[str] = set()

    def register(self, obj: Any, prefix: str) -> None:
        if isinstance(obj, BaseModel):
            self.paths[id(obj)] = prefix
            self.keep.append(obj)
            for name in type(obj).model_fields:
                self.register(obj.__dict__.get(name), f"{prefix}{name}.")
        elif isinstance(obj, list):
            for i, item in enumerate(obj):
                self.register(item, f"{prefix}{i}.")

    def __enter__(self):
        recorder, original_copy = self, BaseModel.model_copy

        def getattribute(obj, name):
            value = object.__getattribute__(obj, name)
            prefix = recorder.paths.get(id(obj))
            if prefix is not None and name in type(obj).model_fields and name not in recorder.replaced.get(
                    id(obj), ()):
                recorder.read.add(prefix + name)
            return value

        def model_copy(obj, *args, **kwargs):
            copied = original_copy(obj, *args, **kwargs)
            if id(obj) in recorder.paths:
                update = kwargs.get("update") or (args[0] if args else None) or {}
                recorder.register(copied, recorder.paths[id(obj)])
                recorder.replaced[id(copied)] = recorder.replaced.get(id(obj), set()) | {
                    k for k, v in update.items() if not isinstance(v, BaseModel)}
            return copied

        self._saved = BaseModel.__dict__.get("__getattribute__"), original_copy
        BaseModel.__getattribute__ = getattribute
        BaseModel.model_copy = model_copy
        return self

    def __exit__(self, *exc):
        getattribute, model_copy = self._saved
        if getattribute is None:
            del BaseModel.__getattribute__
        else:
            BaseModel.__getattribute__ = getattribute
        BaseModel.model_copy = model_copy


class StageReads:
    """The plan's recorder, run for real: the fields read between two stage runs belong to the later one."""

    def __init__(self, recorder: ReadRecorder):
        self.recorder = recorder
        self.by_run: dict[tuple[str, str], set[str]] = {}
        self.rows: list = []

    def add(self, ref):
        self.by_run[(ref.stage, ref.label)] = set(self.recorder.read)
        self.recorder.read.clear()
        return ref

    def execute(self, ws: Workspace):
        """The graph's executor: each job run for real, its reads recorded."""
        def run(step, jobs):
            if step == "data":
                self.recorder.read.clear()  # the graph's choice of step order, before any stage ran
            return [self.add(job.run(ws)) for job in jobs]

        return run


def _declared_outside_key(path: str) -> bool:
    """The field, or a section above it, is declared NOT_IN_KEY."""
    model: Any = PolymathConfig
    for part in path.split("."):
        if part.isdigit():
            continue
        models = [t for t in _leaves(model) if isinstance(t, type) and issubclass(t, BaseModel)]
        if not models or part not in models[0].model_fields:
            return False
        if not in_key(models[0], part):
            return True
        model = models[0].model_fields[part].annotation
    return False


def _leaves(annotation: Any) -> list[Any]:
    args = typing.get_args(annotation)
    return [a for arg in args for a in _leaves(arg)] if args and typing.get_origin(annotation) is not Literal \
        else [annotation]


def _value(cfg: PolymathConfig, path: str) -> Any:
    node: Any = cfg
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def _candidates(value: Any, annotation: Any) -> list[Any]:
    return [c for c in _tries(value, annotation) if c != value]


def _tries(value: Any, annotation: Any) -> list[Any]:
    options = [a for a in _leaves(annotation) if a is not type(None)]
    literal = [v for a in [annotation, *typing.get_args(annotation)] if typing.get_origin(a) is Literal
               for v in typing.get_args(a)]
    if literal:
        return [v for v in literal if v != value]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value - 1, value * 2]
    if isinstance(value, float):
        return [value * 1.5 + 0.01, value / 2, value + 0.1, value + 0.001]
    if value is None and int in options:
        return [1, 2, 8]
    if value is None and float in options:
        return [0.5, 0.1, 2.0]
    return []


@pytest.fixture(scope="module")
def stage_reads(micro_config_path, tmp_path_factory):
    # the learnability probe on, so that the curate stage samples too
    cfg = load_config(micro_config_path, ["curate.strategy=kmeans-learnable", "curate.probe_k=2",
                                          "curate.probe_max=40"])
    ws = Workspace(tmp_path_factory.mktemp("coverage"))
    with ReadRecorder() as recorder:
        recorder.register(cfg, "")
        reads = StageReads(recorder)
        walk(cfg, reads.execute(ws))
    return cfg, ws, reads.by_run


def test_every_field_a_stage_reads_changes_its_key(stage_reads):
    cfg, ws, by_run = stage_reads
    assert {stage for stage, _ in by_run} == {"data", "model", "curate", "train", "evaluate", "merge"}
    keys = {(r.stage, r.label): r.key for r in plan_runs(cfg, ws)}
    fields = sorted({f for read in by_run.values() for f in read if not _declared_outside_key(f)})
    changed_keys: dict[str, dict] = {}
    unchecked = []
    for path in fields:
        for candidate in _candidates(_value(cfg, path), field_annotation(path)):
            try:
                changed = with_changes(cfg, {path: candidate})
            except ConfigError:
                continue
            changed_keys[path] = {(r.stage, r.label): r.key for r in plan_runs(changed, ws)}
            break
        else:
            unchecked.append(path)
    gaps = [f"{stage} {label} reads {path}, but its key does not change with it"
            for (stage, label), read in by_run.items() for path in sorted(read)
            if path in changed_keys and changed_keys[path].get((stage, label)) == keys[(stage, label)]]
    assert not gaps, "\n".join(gaps)
    assert len(changed_keys) >= 40, f"only {len(changed_keys)} fields could be changed: {unchecked}"
