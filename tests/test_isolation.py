"""Worker processes: a worker that dies is reported as such, and the next call gets a fresh pool."""

from __future__ import annotations

import os
from concurrent.futures.process import BrokenProcessPool

import pytest

from pipeline import isolation


def _die() -> None:
    os._exit(9)  # what the kernel's OOM killer leaves behind: no exception, no traceback


def _pid() -> int:
    return os.getpid()


def test_a_worker_that_dies_is_named_with_the_fix_and_the_pool_is_replaced():
    with pytest.raises(BrokenProcessPool, match=r"worker process died while running _die .*lower `workers`"):
        isolation.call(_die, workers=2)
    assert isolation.call(_pid, workers=2) != os.getpid()  # a fresh pool serves the next call
    isolation.shutdown()
