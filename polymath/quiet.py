"""Quiet normal runs: library warnings, per-model loading bars and tracebacks of user errors stay out of the
console (``--debug`` keeps them all; Prefect's own run logs keep the tracebacks either way)."""

from __future__ import annotations

import functools
import logging
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import PolymathError

# SyntaxWarning: a dependency's source compiled on its first import (reasoning-gym's cellpylib: `is "recursive"`)
QUIET_WARNINGS = (FutureWarning, DeprecationWarning, UserWarning, SyntaxWarning)

# Inherited by the worker processes the stages spawn, so they are quiet too.
QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" bar follows it
    "PYTHONWARNINGS": ",".join(f"ignore::{category.__name__}" for category in QUIET_WARNINGS),
}


def _is_user_error(exc: BaseException | None) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, PolymathError):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


@functools.cache
def _user_error_names() -> re.Pattern:
    """Built once, on the first record a console handler sees (every error class is defined by then)."""
    names = set()
    todo = [PolymathError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return re.compile(r"\b(" + "|".join(sorted(names)) + r")\b[(:]")


class _DropUserTracebacks(logging.Filter):
    """Drop the traceback when the exception is (or was caused by) a PolymathError, and Prefect's own records
    of a run failing with one (each failed task and flow repeats the message): the command prints it once."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and _is_user_error(record.exc_info[1]):
            record.exc_info, record.exc_text = None, None
            if record.name.startswith("prefect"):
                return False
        if record.name.startswith("prefect") and _user_error_names().search(record.getMessage()):
            return False
        return True


def quiet_libraries() -> None:
    """Silence library warnings and progress bars here and in processes started from here."""
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    for category in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", category=category)
    logging.getLogger("transformers").setLevel(logging.ERROR)


def quiet_console(debug: bool = False) -> None:
    """Library warnings, loading bars and user errors' tracebacks off the console, unless ``debug``; call it
    again once Prefect is imported (its console handlers exist only from then)."""
    if not debug:
        quiet_libraries()
        quiet_user_tracebacks()


def _console_handlers() -> set[logging.Handler]:
    """Every console handler configured so far (the root's and every logger's, Prefect's included)."""
    handlers = {h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)}
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            handlers.update(h for h in logger.handlers if isinstance(h, logging.StreamHandler))
    return handlers


def quiet_user_tracebacks() -> None:
    """Drop user errors' tracebacks from every console handler configured so far (Prefect's included)."""
    for handler in _console_handlers():
        if not any(isinstance(f, _DropUserTracebacks) for f in handler.filters):
            handler.addFilter(_DropUserTracebacks())


@contextmanager
def console_logs_at(level: int) -> Iterator[None]:
    """Console handlers show only ``level`` and above inside the block (a progress display replaces their
    per-run lines); loggers keep their levels, so Prefect's API logs are complete."""
    handlers = [(h, h.level) for h in _console_handlers()]
    for handler, _ in handlers:
        handler.setLevel(max(level, handler.level))
    try:
        yield
    finally:
        for handler, old in handlers:
            handler.setLevel(old)
