"""Prefect task runners from the run's execution policy: local threads, or a Ray cluster through prefect-ray."""

from __future__ import annotations

from pipeline.execution import Execution
from polymath.errors import ConfigError


def make_task_runner(execution: Execution):
    """The task runner a flow submits its stage jobs to: ``workers`` local threads (each feeding a worker process
    or running a light stage), or Ray."""
    if execution.runner == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError:
            raise ConfigError("--runner ray needs the ray extra: pip install 'polymath[ray]'") from None
        return RayTaskRunner(address=execution.ray_address) if execution.ray_address else RayTaskRunner()
    from prefect.task_runners import ThreadPoolTaskRunner

    # One worker by default: CPU stages already use every core through torch; GPU stages share one device.
    return ThreadPoolTaskRunner(max_workers=execution.workers)


def under(flow_fn, execution: Execution):
    """``flow_fn`` with the task runner of ``execution``."""
    return flow_fn.with_options(task_runner=make_task_runner(execution))


def ray_options(num_gpus: float = 0.0, num_cpus: float = 1.0):
    """Per-task Ray resources (a no-op context when Ray is not the runner)."""
    from contextlib import nullcontext

    try:
        from prefect_ray.context import remote_options
    except ImportError:
        return nullcontext()
    kwargs = {"num_cpus": num_cpus}
    if num_gpus:
        kwargs["num_gpus"] = num_gpus
    return remote_options(**kwargs)
