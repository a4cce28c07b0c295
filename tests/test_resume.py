"""A training killed with SIGKILL resumes from its last checkpoint on rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

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
    curate = curate_stage.run(cfg, ws, data=data)
    model = model_stage.run(cfg, ws, data=data)
    train_stage.run(cfg, ws, model=model, data=data, curate=curate, domain="gcd")
""")


def test_a_training_killed_mid_run_resumes_from_its_checkpoint(micro_config_path, tmp_path):
    cfg = load_config(micro_config_path, OVERRIDES)
    ws = Workspace(tmp_path / "ws")
    data = data_stage.run(cfg, ws)
    curate = curate_stage.run(cfg, ws, data=data)
    model = model_stage.run(cfg, ws, data=data)

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
    assert list(train_dir.glob(".partial-*/checkpoints"))  # the killed attempt's checkpoints are still there

    ref = train_stage.run(cfg, ws, model=model, data=data, curate=curate, domain="gcd")
    summary = ref.manifest()["summary"]
    assert summary["resumed_from_step"] >= 4
    steps = pd.read_parquet(ref.dir / "train_steps.parquet")
    rewards = steps[steps.metric == "reward"]
    assert sorted(rewards.step) == list(range(1, 41))  # the killed attempt's steps kept, none twice
    assert sorted(p.name for p in train_dir.iterdir()) == [f".partial-{ref.key}.lock", ref.key]  # no partial folder


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


RESUME = ["train.steps=4", "train.save_steps=2", "train.policy_loss=clip-cov", "train.cov_fraction=0.5",
          "train.clip_cov_bounds=[-1000.0, 1000.0]", "train.max_new_tokens=8"]


def _expert_steps(cfg, ws) -> tuple[pd.DataFrame, dict, str]:
    data = data_stage.run(cfg, ws)
    curate = curate_stage.run(cfg, ws, data=data)
    model = model_stage.run(cfg, ws, data=data)
    ref = train_stage.run(cfg, ws, model=model, data=data, curate=curate, domain="gcd")
    steps = pd.read_parquet(ref.dir / "train_steps.parquet")
    last_state = (ref.dir / "checkpoints" / "checkpoint-4" / "polymath_run_state.json").read_text()
    return steps.sort_values(["metric", "step"]).reset_index(drop=True), ref.manifest()["summary"], last_state


def test_an_error_keeps_the_checkpoints_and_two_steps_plus_a_resume_equal_four_straight(micro_config_path, tmp_path,
                                                                                       monkeypatch):
    from training.grpo import PolymathGRPOTrainer

    cfg = load_config(micro_config_path, RESUME)
    straight, _, straight_state = _expert_steps(cfg, Workspace(tmp_path / "straight"))

    ws = Workspace(tmp_path / "resumed")
    step = PolymathGRPOTrainer.training_step

    def fail_after_the_second_checkpoint(self, *args, **kwargs):
        if self.state.global_step == 2:
            raise MemoryError("out of memory (injected)")
        return step(self, *args, **kwargs)

    monkeypatch.setattr(PolymathGRPOTrainer, "training_step", fail_after_the_second_checkpoint)
    with pytest.raises(Exception, match="out of memory"):
        _expert_steps(cfg, ws)
    kept = list((ws.root / "artifacts" / "train").glob(".partial-*/checkpoints/checkpoint-2/polymath_run_state.json"))
    assert kept, "the failed run's checkpoint was deleted"
    monkeypatch.setattr(PolymathGRPOTrainer, "training_step", step)
    resumed, summary, resumed_state = _expert_steps(cfg, ws)
    assert summary["resumed_from_step"] == 2
    # clip-cov's random stream and the rollout-batch count continue where the checkpoint left them
    assert json.loads(resumed_state) == json.loads(straight_state)
    assert (straight.metric == "cov_token_frac").any() and straight[straight.metric == "cov_token_frac"].value.gt(0).any()
    # every recorded quantity but wall time; the entropies of the resumed steps agree to about 1e-5 (float
    # round-off through the reloaded optimizer state), the sampled tokens and rewards exactly
    a, b = (f[f.metric != "step_time"].drop(columns=["run_key"], errors="ignore").reset_index(drop=True)
            for f in (straight, resumed))
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-4)
