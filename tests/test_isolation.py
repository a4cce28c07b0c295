"""Worker processes: a worker that dies is reported as such, and the next call gets a fresh pool."""

from __future__ import annotations

import os
from concurrent.futures.process import BrokenProcessPool

import pytest

from tasks import isolation


def _die() -> None:
    os._exit(9)  # what the kernel's OOM killer leaves behind: no exception, no traceback


def _pid() -> int:
    return os.getpid()


def test_a_worker_that_dies_is_named_with_the_fix_and_the_pool_is_replaced():
    with pytest.raises(BrokenProcessPool, match=r"worker process died while running _die .*lower `workers`"):
        isolation.call(_die, workers=2)
    assert isolation.call(_pid, workers=2) != os.getpid()  # a fresh pool serves the next call
    isolation.shutdown()


def _visible() -> str | None:
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def test_isolated_runs_side_by_side_each_see_a_device_slot_of_their_own():
    from concurrent.futures import ThreadPoolExecutor

    slots = ["0,1", "2,3"]
    with ThreadPoolExecutor(max_workers=2) as threads:
        seen = list(threads.map(lambda _: isolation.call(_visible, isolate=True, device_slots=slots), range(4)))
    assert sorted(set(seen)) == slots  # both slots served, never a run outside them
    assert isolation.call(_visible, isolate=True) == os.environ.get("CUDA_VISIBLE_DEVICES")  # no slots: inherited


def test_the_device_plan_reserves_what_each_run_uses_and_refuses_shared_gpus():
    from pipeline.config import PolymathConfig
    from pipeline.devices import device_slots, plan_devices
    from polymath.errors import ConfigError

    cpu = plan_devices(PolymathConfig(), visible=0)
    assert (cpu.gpu, cpu.gpus_for("train"), cpu.gpus_for("evaluate")) == (False, 0.0, 0.0)
    assert device_slots(cpu, 0) == []
    # a Ray head without GPUs schedules a bf16 / vLLM run's stages onto GPU nodes
    gpu_cfg = PolymathConfig.model_validate({"train": {"bf16": True, "processes": 4}})
    head = plan_devices(gpu_cfg, visible=0)
    assert (head.gpus_for("train"), head.gpus_for("evaluate"), head.gpus_for("merge")) == (4.0, 1.0, 1.0)
    pair = PolymathConfig.model_validate({"workers": 2, "train": {"processes": 2}})
    assert device_slots(plan_devices(pair, visible=4), 4) == ["0,1", "2,3"]
    with pytest.raises(ConfigError, match="need 4 GPUs side by side, and 2 are visible.*workers: 1"):
        plan_devices(pair, visible=2)
