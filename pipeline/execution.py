"""How a run's stage jobs execute, decided once per run: the runner, the workers, the devices.

The flows read it (whether a step's jobs are submitted side by side, and what Ray reserves for each), and so
does the isolation layer (whether a heavy run gets a fresh process, and which devices it sees).

A run is a GPU run when CUDA is visible where the flow runs, or when its config asks for what only a GPU
does (vLLM rollouts or evaluation, bf16 training): a Ray head without GPUs still schedules its trainings
onto GPU nodes. Ray then reserves what each run will use: ``train.processes`` GPUs for a training (one per
DDP rank), one for an evaluation or a merge whose scale sweep samples. Locally, ``workers`` GPU runs side by
side each get a device group of their own (``CUDA_VISIBLE_DEVICES`` of their process), never all of them cuda:0.

    execution = execution_policy(cfg)                 # local, cfg.workers at a time, this machine's GPUs
    execution = execution_policy(cfg, runner="ray", ray_address="ray://head:10001")
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import PolymathConfig
from polymath.errors import ConfigError

RUNNERS = ("local", "ray")


def cuda_devices() -> int:
    """GPUs visible to this process (0 without torch or CUDA)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass(frozen=True)
class Execution:
    """One run's execution policy."""

    runner: str = "local"
    """local: the flow's own threads and worker processes; ray: a Ray cluster through prefect-ray."""
    ray_address: str | None = None
    workers: int = 1
    """Heavy stage runs (trainings, evaluations, merges) side by side."""
    threads: int | None = None
    """Torch CPU threads of each worker process; None: the machine's cores divided among the workers."""
    gpu: bool = False
    """Whether heavy stages run on GPUs."""
    visible: int = 0
    """GPUs visible where the flow runs."""
    train_gpus: int = 1
    """GPUs one training takes (its DDP processes); an evaluation or a merge takes one."""
    merge_samples: bool = False
    """Whether a merge samples (its scale sweep), and so needs a GPU on a GPU run."""

    @property
    def concurrent(self) -> bool:
        """Whether a step's heavy jobs are submitted all at once to the flow's task runner."""
        return self.runner == "ray" or self.workers > 1

    @property
    def isolate(self) -> bool:
        """Whether a heavy run gets a fresh process of its own, which returns its GPU memory when it ends."""
        return self.visible > 0

    def gpus_for(self, stage: str) -> float:
        """GPUs a run of ``stage`` reserves on Ray (0 on a CPU run, and for a merge that does not sample)."""
        if not self.gpu or (stage == "merge" and not self.merge_samples):
            return 0.0
        return float(self.train_gpus) if stage == "train" else 1.0

    def device_slots(self) -> list[str]:
        """The ``CUDA_VISIBLE_DEVICES`` value of each local worker slot: disjoint groups of ``train_gpus`` devices
        (none on a CPU run or with one worker, where a run sees every device)."""
        if self.visible == 0 or self.workers <= 1:
            return []
        size = self.train_gpus
        return [",".join(str(d) for d in range(w * size, (w + 1) * size)) for w in range(self.workers)]


def execution_policy(cfg: PolymathConfig, runner: str = "local", ray_address: str | None = None,
                     visible: int | None = None) -> Execution:
    """The execution policy of ``cfg`` on this machine (``visible``: GPUs seen here, detected when None).

    A ConfigError for an unknown runner, or when local workers would share a GPU: each of ``workers``
    parallel runs needs ``train.processes`` devices of its own.
    """
    if runner not in RUNNERS:
        raise ConfigError(f"unknown runner {runner!r}; choose {' or '.join(RUNNERS)}")
    visible = cuda_devices() if visible is None else visible
    asks_gpu = cfg.train.use_vllm is True or cfg.train.bf16 or cfg.evaluate.backend == "vllm"
    need = cfg.workers * cfg.train.processes
    if runner == "local" and visible > 0 and cfg.workers > 1 and visible < need:
        raise ConfigError(
            f"workers: {cfg.workers} with train.processes: {cfg.train.processes} runs need {need} GPUs side by "
            f"side, and {visible} are visible: parallel runs would share cuda:0. Set workers: "
            f"{max(1, visible // cfg.train.processes)} (or make more GPUs visible)"
        )
    return Execution(runner=runner, ray_address=ray_address, workers=cfg.workers, threads=cfg.worker_threads,
                     gpu=visible > 0 or asks_gpu,
                     visible=visible, train_gpus=cfg.train.processes, merge_samples=bool(cfg.merge.scales))
