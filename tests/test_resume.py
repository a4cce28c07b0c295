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

from pipeline import curate as curate_stage, data as data_stage, model as model_stage, train as train_stage
from pipeline.config import load_config
from polymath.workspace import Workspace

OVERRIDES = ["train.steps=40", "train.save_steps=2"]

SCRIPT = textwrap.dedent("""
    import sys
    from pipeline.config import load_config
    from polymath.workspace import Workspace
    from pipeline import curate as curate_stage, data as data_stage, model as model_stage, train as train_stage

    cfg = load_config(sys.argv[1], sys.argv[3:])
    ws = Workspace(sys.argv[2])
    data = data_stage.run(cfg, ws)
    curate = curate_stage.run(cfg, ws, data)
    model = model_stage.run(cfg, ws, data)
    train_stage.run(cfg, ws, model, data, curate, "gcd")
""")


def test_a_training_killed_mid_run_resumes_from_its_checkpoint(micro_config_path, tmp_path):
    cfg = load_config(micro_config_path, OVERRIDES)
    ws = Workspace(tmp_path / "ws")
    data = data_stage.run(cfg, ws)
    curate = curate_stage.run(cfg, ws, data)
    model = model_stage.run(cfg, ws, data)

    train_dir = ws.root / "artifacts" / "train"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(micro_config_path), str(ws.root), *OVERRIDES],
                            cwd=Path(__file__).resolve().parent.parent, env={**os.environ, "PYTHONPATH": "."})
    try:
        deadline = time.time() + 240
        # killed once checkpoint-4 is complete (its controller state is written last), wherever the next one is
        while not list(train_dir.glob(".partial-*/checkpoints/checkpoint-4/polymath_controllers.json")):
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

    ref = train_stage.run(cfg, ws, model, data, curate, "gcd")
    summary = ref.manifest()["summary"]
    assert summary["resumed_from_step"] >= 4
    steps = pd.read_parquet(ref.dir / "train_steps.parquet")
    rewards = steps[steps.metric == "reward"]
    assert sorted(rewards.step) == list(range(1, 41))  # the killed attempt's steps kept, none twice
    assert sorted(p.name for p in train_dir.iterdir()) == [ref.key]  # no in-progress folder, no lock


def test_a_checkpoint_cut_off_while_saving_is_skipped_and_removed(tmp_path):
    from training.controllers import STATE_FILE
    from training.expert import last_complete_checkpoint

    root = tmp_path / "checkpoints"
    for step, complete in ((2, True), (4, True), (6, False)):
        folder = root / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text("{}")
        if complete:
            (folder / STATE_FILE).write_text("{}")
    (root / "checkpoint-10").mkdir()  # killed before anything was written
    assert last_complete_checkpoint(root) == str(root / "checkpoint-4")
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert last_complete_checkpoint(tmp_path / "none") is None
