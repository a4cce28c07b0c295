"""Worker processes: a worker that dies is reported as such, and the next call gets a fresh pool."""

from __future__ import annotations

import os
from concurrent.futures.process import BrokenProcessPool

import pytest

from pipeline.execution import Execution
from tasks import isolation

TWO_WORKERS = Execution(workers=2)


def _die() -> None:
    os._exit(9)  # what the kernel's OOM killer leaves behind: no exception, no traceback


def _pid() -> int:
    return os.getpid()


def test_a_worker_that_dies_is_named_with_the_fix_and_the_pool_is_replaced():
    with pytest.raises(BrokenProcessPool, match=r"worker process died while running _die .*lower `workers`"):
        isolation.call(_die, execution=TWO_WORKERS)
    assert isolation.call(_pid, execution=TWO_WORKERS) != os.getpid()  # a fresh pool serves the next call
    isolation.shutdown()


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def test_worker_processes_compute_with_the_threads_the_policy_pins():
    # the pinned count, whatever the machine's cores; unpinned, the cores divided among the workers
    assert isolation.call(_threads, execution=Execution(workers=2, threads=3)) == 3
    assert isolation.call(_threads, execution=TWO_WORKERS) == max(1, (os.cpu_count() or 1) // 2)
    isolation.shutdown()


def test_the_demo_pins_every_thread_count_that_changes_its_numbers():
    # a 4-core machine's defaults (4 threads for the warm start, 2 per worker): another base model
    from pipeline.config import load_config
    from pipeline.execution import execution_policy

    cfg = load_config("demo")
    assert cfg.model.tiny.threads is not None and cfg.train.cpu_threads is not None
    assert execution_policy(cfg, visible=0).threads == cfg.worker_threads is not None


def _visible() -> str | None:
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def test_isolated_runs_side_by_side_each_see_a_device_slot_of_their_own():
    from concurrent.futures import ThreadPoolExecutor

    pair = Execution(workers=2, gpu=True, visible=4, train_gpus=2)  # what a 4-GPU machine's policy says
    with ThreadPoolExecutor(max_workers=2) as threads:
        seen = list(threads.map(lambda _: isolation.call(_visible, execution=pair), range(4)))
    assert sorted(set(seen)) == ["0,1", "2,3"]  # both slots served, never a run outside them
    one = Execution(gpu=True, visible=1)
    assert isolation.call(_visible, execution=one) == os.environ.get("CUDA_VISIBLE_DEVICES")  # no slots: inherited


def test_the_device_plan_reserves_what_each_run_uses_and_refuses_shared_gpus():
    from pipeline.config import PolymathConfig
    from pipeline.execution import execution_policy
    from polymath.errors import ConfigError

    cpu = execution_policy(PolymathConfig(), visible=0)
    assert (cpu.gpu, cpu.gpus_for("train"), cpu.gpus_for("evaluate"), cpu.isolate) == (False, 0.0, 0.0, False)
    assert cpu.device_slots() == [] and not cpu.concurrent
    # a Ray head without GPUs schedules a bf16 / vLLM run's stages onto GPU nodes
    gpu_cfg = PolymathConfig.model_validate({"train": {"bf16": True, "processes": 4}, "merge": {"scales": [1.0]}})
    head = execution_policy(gpu_cfg, runner="ray", visible=0)
    assert (head.gpus_for("train"), head.gpus_for("evaluate"), head.gpus_for("merge")) == (4.0, 1.0, 1.0)
    assert head.concurrent and not head.isolate
    # a merge without a scale sweep does not sample: it reserves no GPU
    no_sweep = execution_policy(gpu_cfg.model_copy(update={"merge": gpu_cfg.merge.model_copy(update={"scales": None})}),
                                visible=0)
    assert no_sweep.gpus_for("merge") == 0.0
    pair = PolymathConfig.model_validate({"workers": 2, "train": {"processes": 2}})
    assert execution_policy(pair, visible=4).device_slots() == ["0,1", "2,3"]
    with pytest.raises(ConfigError, match="need 4 GPUs side by side, and 2 are visible.*workers: 1"):
        execution_policy(pair, visible=2)
    with pytest.raises(ConfigError, match="unknown runner 'dask'; choose local or ray"):
        execution_policy(pair, runner="dask")
