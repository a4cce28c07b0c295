"""Which devices a run's heavy stages use: decided once per run from the config and this machine.

A run is a GPU run when CUDA is visible where the flow runs, or when its config asks for what only a GPU
does (vLLM rollouts or evaluation, bf16 training): a Ray head without GPUs still schedules its trainings
onto GPU nodes. Ray then reserves what each run will use: ``train.processes`` GPUs for a training (one per
DDP rank), one for an evaluation or a merge (its scale sweep samples). Locally, ``workers`` GPU runs side by
side each get a device of their own (``CUDA_VISIBLE_DEVICES`` of their process), never all of them cuda:0.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import PolymathConfig
from polymath.errors import ConfigError



def cuda_devices() -> int:
    """GPUs visible to this process (0 without torch or CUDA)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass(frozen=True)
class Devices:
    """The run's device plan: whether heavy stages use GPUs, and how many each run of a stage reserves."""

    gpu: bool
    train_gpus: int
    """GPUs one training takes (its processes); evaluations and merges take one."""
    workers: int

    def gpus_for(self, stage: str) -> float:
        """GPUs a run of ``stage`` reserves on Ray (0 on a CPU run)."""
        if not self.gpu:
            return 0.0
        return float(self.train_gpus) if stage == "train" else 1.0


def plan_devices(cfg: PolymathConfig, visible: int | None = None) -> Devices:
    """The device plan of ``cfg`` on this machine (``visible``: GPUs seen here, detected when None).

    A ConfigError when local workers would share a GPU: each of ``workers`` parallel runs needs
    ``train.processes`` devices of its own.
    """
    visible = cuda_devices() if visible is None else visible
    asks_gpu = cfg.train.use_vllm is True or cfg.train.bf16 or cfg.evaluate.backend == "vllm"
    devices = Devices(gpu=visible > 0 or asks_gpu, train_gpus=cfg.train.processes, workers=cfg.workers)
    need = cfg.workers * cfg.train.processes
    if visible > 0 and cfg.workers > 1 and visible < need:
        raise ConfigError(
            f"workers: {cfg.workers} with train.processes: {cfg.train.processes} runs need {need} GPUs side by "
            f"side, and {visible} are visible: parallel runs would share cuda:0. Set workers: "
            f"{max(1, visible // cfg.train.processes)} (or make more GPUs visible)"
        )
    return devices


def device_slots(devices: Devices, visible: int) -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` value of each local worker slot: disjoint groups of ``train_gpus`` devices
    (no slots on a CPU run or with one worker, where a run sees every device)."""
    if visible == 0 or devices.workers <= 1:
        return []
    size = devices.train_gpus
    return [",".join(str(d) for d in range(w * size, (w + 1) * size)) for w in range(devices.workers)]
