"""Scale-out: tasks on a local Ray instance through prefect-ray (optional extra)."""

from __future__ import annotations

import pytest

pytest.importorskip("prefect_ray")
pytestmark = pytest.mark.slow


def test_two_tasks_run_in_parallel_on_local_ray(prefect_harness):
    import os

    from prefect import flow, task

    from flows.runners import make_task_runner, ray_options
    from pipeline.execution import Execution

    @task
    def worker_pid(x: int) -> tuple[int, int]:
        return x * x, os.getpid()

    @flow(task_runner=make_task_runner(Execution(runner="ray")))
    def fan_out() -> list[tuple[int, int]]:
        with ray_options(num_cpus=0.5):
            futures = [worker_pid.submit(i) for i in (3, 4)]
        return [f.result() for f in futures]

    results = fan_out()
    assert [r[0] for r in results] == [9, 16]
    assert all(pid != os.getpid() for _, pid in results)  # ran in Ray workers, not in the flow's process
