"""``polymath merge``: one option per merge parameter, generated from the methods' own ``Params``.

A parameter is declared once, as a ``MergeConfig`` field (its type, default and help) that a method's
``Params`` names; the command line, what a merge records and the check that a method reads an option all
follow from that. Adding a parameter to a method adds its option here.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import typing
from pathlib import Path
from typing import Any, Optional

import typer

from merging.config import MergeConfig
from merging.methods import METHODS, SHARED_OPTIONS, method_names


def _readers() -> dict[str, list[str]]:
    """MergeConfig field -> the methods whose Params read it, in registry order."""
    readers: dict[str, list[str]] = {}
    for name in method_names():
        for field in METHODS[name].Params.model_fields:
            if field not in SHARED_OPTIONS:
                readers.setdefault(field, []).append(name)
    return readers


def _first_sentence(text: str) -> str:
    text = " ".join(text.split())
    return text.split(". ")[0].rstrip(".") + "."


def _is_list(annotation: Any) -> bool:
    return any(typing.get_origin(a) is list for a in (annotation, *typing.get_args(annotation)))


def _parameter(field: str, methods: list[str]) -> inspect.Parameter:
    info = MergeConfig.model_fields[field]
    flag = "--" + field.replace("_", "-")
    default = info.default if info.default is not None else "none"
    help_ = f"{_first_sentence(info.description or '')} Read by: {', '.join(methods)} (default {default})."
    if info.annotation is bool:
        option, kind = typer.Option(None, f"{flag}/--no-{flag[2:]}", help=help_), Optional[bool]
    elif _is_list(info.annotation):
        option, kind = typer.Option(None, flag, help=help_ + " Comma-separated."), Optional[str]
    elif info.annotation in (int, Optional[int]):
        option, kind = typer.Option(None, flag, help=help_), Optional[int]
    elif info.annotation in (float, Optional[float]):
        option, kind = typer.Option(None, flag, help=help_), Optional[float]
    else:  # a Literal: MergeConfig names the choices when a value is not one of them
        choices = "|".join(str(a) for a in typing.get_args(info.annotation))
        option, kind = typer.Option(None, flag, help=f"{choices}: {help_}"), Optional[str]
    return inspect.Parameter(field, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)


def floats(text: Optional[str], option: str) -> Optional[list[float]]:
    """Comma-separated numbers, or a ConfigError naming ``option``."""
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        from polymath.errors import ConfigError

        raise ConfigError(f"{option} {text!r}: expected numbers separated by commas, e.g. 0.5,1,2") from None


def merge(
    adapters: list[Path] = typer.Argument(..., help="peft LoRA adapter folders on one base model."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the merged adapter."),
    method: str = typer.Option("robustmerge", "--method", "-m", help=" | ".join(method_names())),
    scales: Optional[str] = typer.Option(None, "--scales", help="A scale grid, comma-separated: one adapter per value under OUT/scale-<value>, each multiplying the method's own scale (lambda, every weight, or its scale)."),
    save_dtype: Optional[str] = typer.Option(None, "--save-dtype", help="auto | float32 | bfloat16 | float16."),
    device: Optional[str] = typer.Option(None, "--device", help="Torch device of the merge (cpu, cuda)."),
    base_model: Optional[Path] = typer.Option(None, "--base-model", help="Base model folder (TIES/DARE/task arithmetic)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help="Also record the merge in this workspace's DuckDB."),
    **params: Any,
) -> None:
    """Merge LoRA experts into one peft adapter (like mergekit, for adapters)."""
    import pandas as pd
    from pydantic import ValidationError

    from merging.merge import merge_adapters
    from merging.methods import get_method, unread_options
    from pipeline.config import option_errors
    from pipeline.merge import merge_row
    from polymath.errors import ConfigError, PolymathError
    from polymath.workspace import Workspace

    from .cli import _fail, console

    try:
        for field, value in params.items():
            if value is not None and _is_list(MergeConfig.model_fields[field].annotation):
                params[field] = floats(value, "--" + field.replace("_", "-"))
        grid = floats(scales, "--scales")
        given = {"method": method, **params, "save_dtype": save_dtype, "device": device, "base_model": base_model}
        given = {k: v for k, v in given.items() if v is not None}
        if unread := unread_options(method, {k: "--" + k.replace("_", "-") for k in given}):
            raise ConfigError(unread)
        try:
            cfg = MergeConfig.model_validate(given)
        except ValidationError as exc:
            raise ConfigError(option_errors(exc)) from None
        runs = [(out, cfg, None)]
        if grid:
            merger = get_method(cfg.method)
            runs = [(out / f"scale-{v:g}", merger.scaled(cfg, v, len(adapters)), v) for v in grid]
        for folder, run_cfg, value in runs:
            report = merge_adapters(adapters, folder, run_cfg, overwrite=overwrite)
            if workspace is not None:
                from evaluation.store import Store

                key = "cli-" + hashlib.sha256(
                    json.dumps([str(a.resolve()) for a in adapters] + [run_cfg.model_dump_json()]).encode()
                ).hexdigest()[:12]
                store = Store(Workspace(workspace).db_path)
                store.ensure_schema()
                row = merge_row(report, key, f"merged:{run_cfg.method}", value)
                store.replace("merge_runs", pd.DataFrame([row]), {"run_key": key})
            console.print(f"{report.method}: rank {report.rank}, {report.seconds:.2f}s -> {folder}")
    except PolymathError as exc:
        _fail(exc)


_fixed = [p for p in inspect.signature(merge).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
merge.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    _fixed + [_parameter(field, methods) for field, methods in _readers().items()])
