"""One expert trained by several processes: ``train.processes`` > 1 launches this module once per rank.

    train_on_processes(model_dir, problems, reward_name, config, out_dir, expert, load)   # from the train stage

writes a job folder (the problems, the config, where to write) and runs

    accelerate launch --multi_gpu --num_processes N [--config_file ACCELERATE.yaml] -m training.launch JOB
    python -m torch.distributed.run --nproc_per_node N -m training.launch JOB        # CPU: gloo

Every rank runs :func:`training.expert.train_expert`; TRL and accelerate split each rollout batch between
them and the trainer reduces the step's statistics over ranks, so the controllers see the same entropy
and set the same coefficient everywhere. The main rank writes the adapter and the step table; every rank
writes its own step record to ``ranks/rank<r>.parquet`` (what the controllers saw there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from polymath.errors import TrainingError
from polymath.loading import LoadOptions
from polymath.records import Problem

from .config import TrainConfig
from .expert import TrainResult, train_expert

JOB_FILE = "job.json"
LOG_FILE = "ranks.log"


def launch_command(processes: int, job_dir: Path, accelerate_config: str | None = None,
                   cuda: bool | None = None) -> list[str]:
    """The command that runs ``processes`` ranks of this module on ``job_dir``."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if cuda or accelerate_config:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes)]
        cmd += ["--config_file", accelerate_config] if accelerate_config else ["--multi_gpu"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    return cmd + ["-m", "training.launch", str(job_dir)]


def train_on_processes(model_dir: Path, problems: list[Problem], config: TrainConfig, out_dir: Path, expert: str,
                       load: LoadOptions | None = None) -> TrainResult:
    """Train one expert on ``config.processes`` processes; the result as :func:`train_expert` returns it."""
    out_dir = Path(out_dir)
    job = out_dir / "job"
    job.mkdir(parents=True, exist_ok=True)
    (job / "problems.jsonl").write_text("".join(json.dumps(asdict(p), default=str) + "\n" for p in problems))
    (job / JOB_FILE).write_text(json.dumps({
        "model_dir": str(model_dir), "out_dir": str(out_dir), "expert": expert,
        "train": config.model_dump(mode="json"), "load": asdict(load or LoadOptions()),
    }))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                         os.environ.get("PYTHONPATH", "")])}
    # Every rank's output streams to a file as it runs (hours of GPU logs do not sit in memory); a failure
    # quotes its end and names the file.
    log = out_dir / LOG_FILE
    with log.open("w") as sink:
        code = subprocess.run(launch_command(config.processes, job, config.accelerate_config), env=env,
                              stdout=sink, stderr=subprocess.STDOUT).returncode
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").strip().splitlines()[-40:])
        raise TrainingError(f"expert {expert!r}: the {config.processes}-process training failed (exit {code}); "
                            f"the ranks' output is in {log}, which ends:\n{tail}")
    result = json.loads((out_dir / "result.json").read_text())
    return TrainResult(
        adapter_dir=Path(result["adapter_dir"]),
        steps=pd.read_parquet(out_dir / "steps.parquet"),
        initial_entropy=result["initial_entropy"],
        seconds=result["seconds"],
        resumed_from_step=result["resumed_from_step"],
    )


def _run(job_dir: Path) -> None:
    from polymath.verifiers import reward

    job = json.loads((job_dir / JOB_FILE).read_text())
    problems = [Problem(**json.loads(line)) for line in (job_dir / "problems.jsonl").read_text().splitlines()]
    config = TrainConfig.model_validate(job["train"])
    out_dir = Path(job["out_dir"])
    result = train_expert(Path(job["model_dir"]), problems, reward, config, out_dir, job["expert"],
                          load=LoadOptions(**job["load"]))
    rank = int(os.environ.get("RANK", "0"))
    ranks = out_dir / "ranks"
    ranks.mkdir(exist_ok=True)
    result.steps.to_parquet(ranks / f"rank{rank}.parquet", index=False)
    if rank == 0:
        (out_dir / "result.json").write_text(json.dumps({
            "adapter_dir": str(result.adapter_dir), "initial_entropy": result.initial_entropy,
            "seconds": result.seconds, "resumed_from_step": result.resumed_from_step,
        }))


if __name__ == "__main__":
    _run(Path(sys.argv[1]))
