"""A training killed with SIGKILL resumes from its last checkpoint on rerun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd

from polymath.config import load_config
from polymath.workspace import Workspace
from tasks import stages

OVERRIDES = ["train.steps=40", "train.save_steps=2"]

SCRIPT = textwrap.dedent("""
    import sys
    from polymath.config import load_config
    from polymath.workspace import Workspace
    from tasks import stages

    cfg = load_config(sys.argv[1], sys.argv[3:])
    ws = Workspace(sys.argv[2])
    data = stages.data_stage(cfg, ws)
    curate = stages.curate_stage(cfg, ws, data)
    model = stages.model_stage(cfg, ws, data)
    stages.train_stage(cfg, ws, model, data, curate, "gcd")
""")


def test_a_training_killed_mid_run_resumes_from_its_checkpoint(micro_config_path, tmp_path):
    cfg = load_config(micro_config_path, OVERRIDES)
    ws = Workspace(tmp_path / "ws")
    data = stages.data_stage(cfg, ws)
    curate = stages.curate_stage(cfg, ws, data)
    model = stages.model_stage(cfg, ws, data)

    train_dir = ws.root / "artifacts" / "train"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(micro_config_path), str(ws.root), *OVERRIDES],
                            cwd=Path(__file__).resolve().parent.parent, env={**os.environ, "PYTHONPATH": "."})
    try:
        deadline = time.time() + 240
        while not list(train_dir.glob(".partial-*/checkpoints/checkpoint-4")):
            assert proc.poll() is None, "the training ended before it could be killed"
            assert time.time() < deadline, "no checkpoint within 240 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not list(train_dir.glob("[!.]*"))  # nothing looks finished
    assert list(train_dir.glob(".partial-*.lock"))  # the dead writer's lock is still there

    ref = stages.train_stage(cfg, ws, model, data, curate, "gcd")
    summary = ref.manifest()["summary"]
    assert summary["resumed_from_step"] >= 4
    steps = pd.read_parquet(ref.dir / "train_steps.parquet")
    rewards = steps[steps.metric == "reward"]
    assert sorted(rewards.step) == list(range(1, 41))  # the killed attempt's steps kept, none twice
    assert sorted(p.name for p in train_dir.iterdir()) == [ref.key]  # no in-progress folder, no lock
