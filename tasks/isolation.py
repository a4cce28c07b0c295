"""Run GPU stages in their own process so their GPU memory is returned when they end."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def call(fn: Callable[..., Any], *args: Any, isolate: bool | None = None, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, in a fresh spawned process when isolating (default: when CUDA is present).

    On CPU the stage runs in-process: a spawned interpreter would re-import torch
    and transformers for nothing.
    """
    if isolate is None:
        isolate = cuda_available()
    if not isolate:
        return fn(*args, **kwargs)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args, **kwargs).result()
