"""Errors a user can cause.

Every message names the file, line, field or module at fault and says how to
fix it; the CLI prints the message without a traceback and exits non-zero.
"""


class PolymathError(Exception):
    """Base class for errors caused by input or configuration."""


class ConfigError(PolymathError):
    """A config file, key or value is wrong."""


class DataError(PolymathError):
    """A dataset file or record is wrong (malformed line, missing field, empty set)."""


class ModelError(PolymathError):
    """A model or tokenizer path is missing or unusable."""


class SelectionError(PolymathError):
    """A curation request cannot be met (k > n, NaN embeddings, all duplicates)."""


class TrainingError(PolymathError):
    """A training run cannot start or resume."""


class MergeError(PolymathError):
    """Adapters cannot be merged (different base, modules, shapes or ranks)."""


class StoreError(PolymathError):
    """The results database is busy, missing, or a query is invalid."""


class StageError(PolymathError):
    """A pipeline stage failed; names the stage and the cause."""
