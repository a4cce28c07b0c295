"""What a scheduled deployment may be asked to do: a profile by name, safe overrides, a workspace under a root.

A deployment's parameters come from whoever can reach the Prefect server, and its flow runs on a worker with
that worker's files and credentials. So a run parameter may choose among the worker's profiles
(``POLYMATH_PROFILES``, default ``configs/``), change settings whose values are numbers, switches or one of a
fixed set of choices, and name a workspace below ``POLYMATH_DEPLOY_ROOT`` (default ``./workspace``). It may not
name a file, a folder, a URL, a model or code to load: every key whose value is free text (paths, model names,
tracking backends, encoders) is refused, and so is ``trust_remote_code``. The worker's operator sets the two
environment variables; nothing a run parameter says can change them.
"""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Any, Literal

from polymath.errors import ConfigError

from .config import CONFIG_DIR, PolymathConfig, field_annotation, leaf_types, load_config, parse_override

PROFILES_ENV = "POLYMATH_PROFILES"
ROOT_ENV = "POLYMATH_DEPLOY_ROOT"

# Switches and choices that still load code, change where models and data come from, or send logs away.
REFUSED_KEYS = frozenset({"model.trust_remote_code", "model.source", "data.format", "train.report_to"})

# Free-text keys whose values are names checked against a registry or the data's domains (never paths).
REGISTRY_KEYS = frozenset({
    "curate.strategy", "merge.methods", "merge.method", "train.entropy.mode",
    "data.domains", "curate.domains", "train.domains", "evaluate.domains", "merge.leave_out",
})


def profiles_dir() -> Path:
    return Path(os.environ.get(PROFILES_ENV) or CONFIG_DIR)


def deploy_root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or "workspace").resolve()


def _is_safe_value_type(annotation: Any) -> bool:
    for leaf in leaf_types(annotation):
        if leaf is type(None) or leaf in (bool, int, float) or typing.get_origin(leaf) is Literal:
            continue
        return False
    return True


def allowed_override(key: str) -> bool:
    """Whether a deployment run may set ``key`` (a dotted config key)."""
    if key in REFUSED_KEYS:
        return False
    if key in REGISTRY_KEYS:
        return True
    annotation = field_annotation(key)
    return annotation is not None and _is_safe_value_type(annotation)


def check_overrides(overrides: list[str] | None) -> list[str]:
    """``overrides`` unchanged when every key is allowed; otherwise a ConfigError naming the refused keys."""
    refused = [key for key, _ in map(parse_override, overrides or []) if not allowed_override(key)]
    if refused:
        raise ConfigError(
            f"deployment parameter overrides: {', '.join(map(repr, refused))} cannot be set by a deployment run "
            "(only numbers, switches and named choices; never paths, models, code or trust_remote_code); "
            "put it in a profile on the worker instead"
        )
    return list(overrides or [])


def resolve_profile_name(name: str) -> Path:
    """A profile of the worker's profile folder, by name only (never a path)."""
    folder = profiles_dir()
    names = sorted(p.stem for p in folder.glob("*.yaml"))
    if name not in names:
        raise ConfigError(f"deployment parameter config: {name!r} is not a profile of this worker; "
                          f"choose one of {', '.join(names) or '(none)'} (files in ${PROFILES_ENV})")
    return folder / f"{name}.yaml"


def resolve_workspace(workspace: str | None) -> Path:
    """``workspace`` (relative to the deploy root, or absolute inside it); None: the root itself."""
    root = deploy_root()
    path = (root / workspace).resolve() if workspace else root
    if path != root and root not in path.parents:
        raise ConfigError(f"deployment parameter workspace: {workspace!r} is outside the deploy root {root} "
                          f"(${ROOT_ENV}); name a folder inside it")
    return path


def deployment_config(config: str, overrides: list[str] | None) -> PolymathConfig:
    """The validated, preflighted config a deployment run asked for, or an error before anything runs."""
    from .preflight import preflight

    cfg = load_config(resolve_profile_name(config), check_overrides(overrides))
    preflight(cfg)
    return cfg
