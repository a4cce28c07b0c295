"""The pipeline's configuration: one pydantic model per stage, YAML profiles, ``--set`` overrides.

A profile (``configs/<name>.yaml``) is validated against :class:`PolymathConfig`;
``--set section.key=value`` overrides are parsed as YAML scalars and applied
before validation, so they are type-checked like the file. Unknown keys are
errors that name the key and suggest the closest valid one.
"""

from __future__ import annotations

import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationInfo, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from curation.config import CurateConfig
from curation.data import DataConfig
from evaluation.config import EvalConfig
from merging.config import MergeConfig
from merging.methods import METHODS
from polymath.errors import ConfigError
from polymath.keys import NOT_IN_KEY
from training.config import TrainConfig
from training.models import ModelConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_PROFILE = "demo"
STAGES = ("curate", "train", "evaluate", "merge")


class CurateStage(CurateConfig):
    """Curation settings plus whether the stage runs at all."""

    enabled: bool = True
    """False trains on the full training split (no selection)."""

    domains: list[str] | None = None
    """Select only among these domains' training problems (None: every domain)."""


class TrainStage(TrainConfig):
    """Training settings plus which experts to train."""

    domains: list[str] | None = Field(None, json_schema_extra=NOT_IN_KEY)
    """Domains that get an expert (None: every domain of the training data); each expert's key has its own."""


class EvaluateStage(EvalConfig):
    """Evaluation settings plus what is evaluated."""

    include_base: bool = Field(True, json_schema_extra=NOT_IN_KEY)
    """Evaluate the base model beside the experts and merges."""

    base_k: int | None = Field(None, ge=1, json_schema_extra=NOT_IN_KEY)
    """Samples per problem for the base model (None: ``k``); more than ``k`` gives the base's pass@k at larger k,
    the headroom RL can turn into avg@k. Comparisons pair per-problem accuracies, which any k estimates."""

    greedy_base: bool = Field(True, json_schema_extra=NOT_IN_KEY)
    """Also evaluate the base model by greedy decoding, one sample per problem (``base@greedy``): the control
    for "learned vs sharpened"."""

    greedy_experts: bool = Field(True, json_schema_extra=NOT_IN_KEY)
    """Also evaluate every expert greedily (``expert:<domain>@greedy``), compared with ``base@greedy``: an expert
    whose greedy decoding beats the base's learned more than a sharper sampling distribution gives."""


class MergeStage(MergeConfig):
    """Merge settings shared by every method, plus the methods the stage runs and how their scale is chosen."""

    methods: list[str] = Field(default_factory=lambda: list(METHODS.names()), json_schema_extra=NOT_IN_KEY)
    """Merge methods to run and evaluate, names of merging/methods.py's registry (default: every one); the
    ``method`` field is set per run."""

    @field_validator("methods")
    @classmethod
    def _registered(cls, names: list[str]) -> list[str]:
        return [METHODS.check(n) for n in names]

    scales: list[float] | None = None
    """Grid of global scale multipliers, the same for every method: each value multiplies the method's own
    configured scale (RobustMerge's ``lam``, the baselines' weight per expert, KnOTS's ``scale``); each method
    is merged at every value, evaluated on the validation split, and kept at the best; the test split sees
    only that one. None: each method at its configured scale, no sweep."""

    sweep_params: dict[str, dict[str, list[float]]] = Field(default_factory=dict)
    """A second parameter swept per method beside the scale, one of the method's own parameters, for example
    ``{robustmerge: {keep: [0.2, 0.5, 1.0]}, ties: {density: [0.2, 0.5, 1.0]}}``: every (scale, value) pair is
    merged and scored on the same validation split, and the best pair is kept. Needs ``scales``. Only a
    method's own entry is in its merge's key."""

    @field_validator("sweep_params")
    @classmethod
    def _own_parameters(cls, grids: dict[str, dict[str, list[float]]], info: ValidationInfo
                        ) -> dict[str, dict[str, list[float]]]:
        if grids and not info.data.get("scales"):
            raise ValueError("sweep_params adds a parameter to the scale sweep: set merge.scales too (e.g. [1.0])")
        for method, grid in grids.items():
            params = METHODS[METHODS.check(method)].Params.model_fields
            if len(grid) != 1:
                raise ValueError(f"{method}: sweep one parameter beside the scale, not {len(grid)}")
            [(name, values)] = grid.items()
            if name not in params or params[name].annotation not in (float, int):
                numeric = [n for n, f in params.items() if f.annotation in (float, int) and n != "rank"]
                raise ValueError(f"{method} has no numeric parameter {name!r} to sweep (it has: {', '.join(numeric)})")
            if not values:
                raise ValueError(f"{method}.{name}: give at least one value")
        return grids

    test_points: bool = False
    """Diagnostics: also score every sweep point on the test split (the evaluate stage's problems,
    ``validation_k`` samples each), written to ``merge_sweep`` with split ``test``; never used for picking.
    Shows what a pick on validation costs on test."""

    validation_per_domain: int = Field(32, ge=1)
    """Validation problems per domain for the scale sweep: training-split problems outside the curated
    subset, so disjoint from the test split and from what the experts trained on."""

    validation_k: int = Field(2, ge=1)
    """Samples per validation problem (at the evaluate stage's temperature)."""

    seeds: list[int] = Field(default_factory=list, json_schema_extra=NOT_IN_KEY)
    """Seeds for the random methods (DARE's drop masks, KnOTS with ``knots_merge: dare``): each seed is a merge
    of its own, ``merged:<method>-seed<s>``, so that a comparison sees the spread over masks. Empty: one merge
    at ``seed``."""

    def seeds_of(self, method: str) -> list[int | None]:
        """The seeds ``method`` merges with, one per merge run (None: one run at ``seed``)."""
        from merging.methods import get_method

        return list(self.seeds) if self.seeds and get_method(method).is_random(self) else [None]

    leave_out: list[str] = Field(default_factory=list, json_schema_extra=NOT_IN_KEY)
    """Domains to leave out in turn: each method also merges the other experts (its scale swept on their
    domains' validation) and is evaluated on every domain, the left-out one unseen (``merged:<method>-without-
    <domain>``)."""


class PolymathConfig(BaseModel):
    """Everything one pipeline run needs."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str = DEFAULT_PROFILE
    """Profile name (shown in reports)."""
    workers: int = Field(1, ge=1)
    """Stage runs of one kind (expert trainings, evaluations) run this many at a time on the local runner, each
    in its own process; 1 runs them one after another in the flow's process."""
    worker_threads: int | None = Field(None, ge=1)
    """Torch CPU threads of each worker process (``workers`` > 1); None: this machine's cores divided among the
    workers. From about four threads torch splits some products differently and the low bits of the results
    change: a profile whose numbers should not depend on the machine's core count sets it."""
    data: DataConfig = Field(default_factory=DataConfig)
    """Where the prompts come from."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The base model."""
    curate: CurateStage = Field(default_factory=CurateStage)
    """Prompt subset selection."""
    train: TrainStage = Field(default_factory=TrainStage)
    """GRPO training of one LoRA expert per domain."""
    evaluate: EvaluateStage = Field(default_factory=EvaluateStage)
    """Sampling and scoring."""
    merge: MergeStage = Field(default_factory=MergeStage)
    """Merging the experts."""

    @model_validator(mode="after")
    def _full_finetune_is_not_merged(self) -> PolymathConfig:
        if self.train.lora.full_finetune and self.merge.methods:
            raise ValueError(
                "train.lora.full_finetune saves whole models, and the merge stage merges LoRA adapters: set "
                "merge.methods to [] (the experts are still trained and evaluated) or train.lora.full_finetune to false"
            )
        return self


# ---------------------------------------------------------------- loading


def resolve_profile(config: str | Path | None) -> Path:
    """A path to a YAML file, or a profile name from configs/ (None: the demo)."""
    if config is None:
        config = DEFAULT_PROFILE
    path = Path(config)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        if not path.exists():
            raise ConfigError(f"{path}: no such config file; pass an existing YAML file or a profile name")
        return path
    named = CONFIG_DIR / f"{config}.yaml"
    if not named.exists():
        names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown profile {str(config)!r}; profiles in {CONFIG_DIR}: {', '.join(names)}")
    return named


def leaf_types(annotation: Any) -> list[Any]:
    """The scalar types a field accepts, through Optional, unions and lists."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return [t for arg in typing.get_args(annotation) for t in leaf_types(arg)]
    if origin in (list, tuple, set, frozenset):
        return [t for arg in typing.get_args(annotation) if arg is not Ellipsis for t in leaf_types(arg)]
    return [annotation]


def field_annotation(dotted: str) -> Any:
    """The annotation of ``dotted`` in PolymathConfig, or None when no such field exists."""
    current: Any = PolymathConfig
    for part in dotted.split("."):
        models = [t for t in leaf_types(current) if isinstance(t, type) and issubclass(t, BaseModel)]
        if not models or part not in models[0].model_fields:
            return None
        current = models[0].model_fields[part].annotation
    return current


def _takes_a_list(annotation: Any) -> bool:
    """A list field (``list[str]``, ``list[str] | None``), not a scalar one."""
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) \
        else (annotation,)
    return any(typing.get_origin(a) is list for a in options) and not any(
        a in (str, int, float, bool) for a in options)


def _set_dotted(tree: dict, dotted: str, value: Any, origin: str) -> None:
    """Set ``dotted`` in ``tree``; a number indexes a list (``data.sources.0.path``)."""
    parts = dotted.split(".")
    node: Any = tree
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[:depth]) or "the top level"
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{origin}: {where} is a list of {len(node)}; {part!r} is not an index of it "
                                  f"(0-{len(node) - 1})")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"{origin}: {where} is a value, not a section; cannot set {dotted}")
        if last:
            node[part] = value
        else:
            node = node.setdefault(part, {})


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set train.steps=20")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {item!r}: empty key; expected section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: cannot parse the value ({exc})") from None
    return key, value


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Valid field names of the (nested) model that ``loc`` points into."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        current = field.annotation
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _explain(exc: ValidationError, origin: str) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        dotted = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            valid = _fields_at(PolymathConfig, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            hint = f"; did you mean {'.'.join([*map(str, loc[:-1]), close[0]])!r}?" if close else ""
            where = ".".join(map(str, loc[:-1])) or "the top level"
            lines.append(f"unknown key {dotted!r}{hint} (valid keys in {where}: {', '.join(valid)})")
        else:
            lines.append(f"{dotted or '(root)'}: {err['msg']} (got {err.get('input')!r})")
    return f"{origin}: invalid config:\n  " + "\n  ".join(lines)


def _non_finite(tree: Any, prefix: str = "") -> list[str]:
    """Dotted keys of ``tree`` holding inf or NaN."""
    if isinstance(tree, dict):
        return [k for key, v in tree.items() for k in _non_finite(v, f"{prefix}{key}.")]
    if isinstance(tree, (list, tuple)):
        return [k for i, v in enumerate(tree) for k in _non_finite(v, f"{prefix}{i}.")]
    return [prefix.rstrip(".")] if isinstance(tree, float) and not math.isfinite(tree) else []


def _validated(tree: dict, origin: str) -> PolymathConfig:
    try:
        cfg = PolymathConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, origin)) from None
    # pydantic's bounds let inf and NaN through (NaN compares false with every bound)
    if bad := _non_finite(cfg.model_dump(mode="python")):
        raise ConfigError(f"{origin}: invalid config:\n  " + "\n  ".join(f"{k}: must be a finite number" for k in bad))
    return cfg


def load_config(config: str | Path | None = None, overrides: list[str] | None = None) -> PolymathConfig:
    """Read a profile or YAML file, apply ``--set`` overrides, validate."""
    path = resolve_profile(config)
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data, model, curate, ...) at the top")
    for item in overrides or []:
        key, value = parse_override(item)
        if value is not None and not isinstance(value, list) and _takes_a_list(field_annotation(key)):
            value = [value]  # --set train.report_to=tensorboard: a one-element list
        _set_dotted(tree, key, value, origin=f"--set {item}")
    origin = str(path) + (f" with --set {' '.join(overrides)}" if overrides else "")
    return _validated(tree, origin)


def option_errors(exc: ValidationError) -> str:
    """A command's validation errors as ``--option: message`` parts (the field name is the option)."""
    return "; ".join(f"--{e['loc'][0]}: {e['msg']}" for e in exc.errors())


def with_changes(cfg: PolymathConfig, changes: dict[str, Any], origin: str = "changes") -> PolymathConfig:
    """A copy of ``cfg`` with dotted keys (``train.entropy.mode``) set, validated like ``--set``."""
    tree = cfg.model_dump(mode="json")
    for key, value in changes.items():
        _set_dotted(tree, key, value, origin=f"{origin}: {key}")
    return _validated(tree, origin)


def stage_section(cfg: PolymathConfig, stage: str) -> dict:
    """The JSON-able config that defines one stage (hashed into its key)."""
    return getattr(cfg, stage).model_dump(mode="json")
