"""Who hears of a finished stage run: the CLI's progress display listens here, the Prefect task reports here.

Listeners are plain callables; the task wrapper calls :func:`announce` in the flow's process (a worker
process runs the stage, the flow's process reports it), so a display needs no inter-process channel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from threading import Lock

from pipeline.stage import StageRef

_LISTENERS: list[Callable[[StageRef], None]] = []
_LOCK = Lock()


@contextmanager
def listening(listener: Callable[[StageRef], None]) -> Iterator[None]:
    with _LOCK:
        _LISTENERS.append(listener)
    try:
        yield
    finally:
        with _LOCK:
            _LISTENERS.remove(listener)


def announce(ref: StageRef) -> None:
    """Tell every listener that ``ref`` is finished (run or reused)."""
    with _LOCK:
        listeners = list(_LISTENERS)
    for listener in listeners:
        listener(ref)
