"""Where a heavy stage run executes, as the run's execution policy says: in the flow's process, in a fresh
process (GPU), or in a shared worker pool (CPU).

A GPU stage gets a fresh spawned process so that its GPU memory is returned when it ends. With
``workers > 1`` on CPU, stage runs go to one pool of ``workers`` long-lived spawned processes shared by the
whole flow: each imports torch once and runs with the policy's ``threads`` torch threads (default
``cpu_count // workers``), so two runs side by side do not fight over the cores.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import queue
from contextlib import contextmanager
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from threading import Lock
from typing import Any, Callable

from pipeline.execution import Execution

_POOLS: dict[tuple[int, int], ProcessPoolExecutor] = {}
_LOCK = Lock()


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _pool(workers: int, threads: int | None) -> tuple[tuple[int, int], ProcessPoolExecutor]:
    """The pool of ``workers`` processes with ``threads`` torch threads each (None: the cores divided among them)."""
    key = (workers, threads or max(1, (os.cpu_count() or 1) // workers))
    with _LOCK:
        if key not in _POOLS:
            _POOLS[key] = ProcessPoolExecutor(
                max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_set_threads, initargs=(key[1],),
            )
        return key, _POOLS[key]


@atexit.register
def shutdown() -> None:
    """Stop the worker pools (also called when the interpreter exits)."""
    with _LOCK:
        for pool in _POOLS.values():
            pool.shutdown(wait=True, cancel_futures=True)
        _POOLS.clear()


def _see_devices(visible: str) -> None:
    os.environ["CUDA_VISIBLE_DEVICES"] = visible  # before the stage's first import of torch


_SLOTS: dict[tuple[str, ...], queue.Queue] = {}


@contextmanager
def _device_slot(slots: list[str]):
    """A free slot of ``slots`` (``CUDA_VISIBLE_DEVICES`` values) for the duration; waits while all are taken."""
    if not slots:
        yield None
        return
    with _LOCK:
        free = _SLOTS.get(tuple(slots))
        if free is None:  # first use of these slots: every one is free
            free = _SLOTS[tuple(slots)] = queue.Queue()
            for slot in slots:
                free.put(slot)
    slot = free.get()
    try:
        yield slot
    finally:
        free.put(slot)


def call(fn: Callable[..., Any], *args: Any, execution: Execution = Execution(), **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` where ``execution`` (pipeline/execution.py) puts a heavy run: in a fresh spawned
    process on a GPU machine, on a device slot of its own when several run side by side; else in the shared
    pool with ``workers > 1``; else in-process (a spawned interpreter would re-import torch and transformers
    for nothing)."""
    if execution.isolate:
        with _device_slot(execution.device_slots()) as slot:
            init = dict(initializer=_see_devices, initargs=(slot,)) if slot is not None else {}
            with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"), **init) as pool:
                return pool.submit(fn, *args, **kwargs).result()
    workers = execution.workers
    if workers <= 1:
        return fn(*args, **kwargs)
    key, pool = _pool(workers, execution.threads)
    try:
        return pool.submit(fn, *args, **kwargs).result()
    except BrokenProcessPool:
        # A worker died (killed, out of memory): the next run gets a fresh pool.
        with _LOCK:
            _POOLS.pop(key, None)
        raise BrokenProcessPool(
            f"a worker process died while running {getattr(fn, '__name__', fn)} (most often the system killed it "
            f"for memory: {workers} workers share this machine's RAM); lower `workers`, or train.micro_batch_size "
            "for a training"
        ) from None
