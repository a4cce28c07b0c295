"""Which config fields enter a stage run's key: declared on the field, read here.

A field that says where output goes or how it is shown, or which runs a flow starts, but not what a run
computes, is declared ``Field(..., json_schema_extra=NOT_IN_KEY)``; :func:`key_section` dumps a config
section without such fields, at any depth.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

NOT_IN_KEY: dict[str, Any] = {"in_key": False}


def in_key(model: type[BaseModel], name: str) -> bool:
    extra = model.model_fields[name].json_schema_extra
    return not (isinstance(extra, dict) and extra.get("in_key") is False)


def key_section(section: BaseModel) -> dict[str, Any]:
    """``section`` as JSON-able data, without the fields declared outside the key."""
    out: dict[str, Any] = {}
    dumped = section.model_dump(mode="json")
    for name in type(section).model_fields:
        if not in_key(type(section), name):
            continue
        value = getattr(section, name)
        out[name] = key_section(value) if isinstance(value, BaseModel) else dumped[name]
    return out
