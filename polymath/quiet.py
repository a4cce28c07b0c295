"""Quiet normal runs: library warnings, per-model loading bars and tracebacks of user errors stay out of the
console (``--debug`` keeps them all; Prefect's own run logs keep the tracebacks either way)."""

from __future__ import annotations

import logging
import os
import warnings

from .errors import PolymathError

# Inherited by the worker processes the stages spawn, so they are quiet too.
QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" bar follows it
    "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning,ignore::UserWarning",
}


def _is_user_error(exc: BaseException | None) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, PolymathError):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


class _DropUserTracebacks(logging.Filter):
    """Keep the record, drop its traceback when the exception is (or was caused by) a PolymathError."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and _is_user_error(record.exc_info[1]):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_libraries() -> None:
    """Silence library warnings and progress bars here and in processes started from here."""
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    logging.getLogger("transformers").setLevel(logging.ERROR)


def quiet_user_tracebacks() -> None:
    """Drop user errors' tracebacks from every console handler configured so far (Prefect's included)."""
    handlers = set(logging.getLogger().handlers)
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            handlers.update(h for h in logger.handlers if isinstance(h, logging.StreamHandler))
    for handler in handlers:
        if not any(isinstance(f, _DropUserTracebacks) for f in handler.filters):
            handler.addFilter(_DropUserTracebacks())
