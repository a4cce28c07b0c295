"""Task runners: local threads by default, a Ray cluster through prefect-ray on request."""

from __future__ import annotations

from polymath.errors import ConfigError


def make_task_runner(runner: str = "local", ray_address: str | None = None):
    if runner == "local":
        from prefect.task_runners import ThreadPoolTaskRunner

        # One worker: CPU stages already use every core through torch; GPU stages share one device.
        return ThreadPoolTaskRunner(max_workers=1)
    if runner == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError:
            raise ConfigError("--runner ray needs the ray extra: pip install 'polymath[ray]'") from None
        return RayTaskRunner(address=ray_address) if ray_address else RayTaskRunner()
    raise ConfigError(f"unknown runner {runner!r}; choose local or ray")


def with_workers(flow_fn, workers: int):
    """``flow_fn`` whose submitted tasks run ``workers`` at a time on local threads (unchanged for 1)."""
    if workers <= 1:
        return flow_fn
    from prefect.task_runners import ThreadPoolTaskRunner

    return flow_fn.with_options(task_runner=ThreadPoolTaskRunner(max_workers=workers))


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
