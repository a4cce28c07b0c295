"""configs/reference.yaml lists every config key with its default and help, in sync with the config models."""

from __future__ import annotations

import yaml

from pipeline.config import PolymathConfig, load_config
from pipeline.reference import REFERENCE_FILE, reference_yaml


def test_the_committed_reference_is_the_generated_one():
    assert REFERENCE_FILE.read_text() == reference_yaml(), (
        "configs/reference.yaml is stale: run `polymath config reference > configs/reference.yaml`"
    )


def test_the_reference_loads_as_the_defaults_and_names_every_key():
    assert load_config(REFERENCE_FILE) == PolymathConfig()

    def keys(model, prefix=""):
        for name, value in model:
            yield prefix + name
            if hasattr(value, "model_fields"):
                yield from keys(value, f"{prefix}{name}.")

    def flat(tree, prefix=""):
        for name, value in tree.items():
            yield prefix + name
            if isinstance(value, dict) and value:
                yield from flat(value, f"{prefix}{name}.")

    assert set(flat(yaml.safe_load(REFERENCE_FILE.read_text()))) >= set(keys(PolymathConfig()))


def test_every_key_has_its_help_above_it():
    lines = REFERENCE_FILE.read_text().splitlines()
    body = [i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")]
    assert body and all(lines[i - 1].lstrip().startswith("#") for i in body)
