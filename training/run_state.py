"""What a resumed training needs beside the weights, the optimizer and the controllers to be the run it
continues: the rollout-batch count and clip-cov's random stream.

HF's Trainer restores the global torch, numpy and Python generators with a checkpoint; clip-cov draws from a
generator of its own (so that its choice of tokens is seeded per run), which it does not know. The main
process's state is saved; every rank starts from it on resume, as every rank started from one seed.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy
import torch

from polymath.errors import TrainingError
from polymath.workspace import write_atomic

RUN_STATE_FILE = "polymath_run_state.json"


def save_run_state(trainer, folder: str | Path) -> None:
    state = {"rollout_batches": trainer._rollout_batches,
             "cov_generator": base64.b64encode(trainer._cov_generator.get_state().numpy().tobytes()).decode()}
    write_atomic(Path(folder) / RUN_STATE_FILE, json.dumps(state))


def load_run_state(trainer, checkpoint: str | Path) -> None:
    path = Path(checkpoint) / RUN_STATE_FILE
    if not path.exists():
        raise TrainingError(f"{path} is missing: the checkpoint predates polymath's run state; delete the "
                            "checkpoint folder to start over")
    state = json.loads(path.read_text())
    trainer._rollout_batches = int(state["rollout_batches"])
    raw = numpy.frombuffer(base64.b64decode(state["cov_generator"]), dtype=numpy.uint8).copy()
    trainer._cov_generator.set_state(torch.from_numpy(raw))
