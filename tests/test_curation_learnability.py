"""Learnability: the base model's probe, the kmeans-learnable strategy, the policy encoder, and their metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from curation.config import CurateConfig
from curation.curate import learnability_frame
from curation.selection import select


def _two_blobs() -> np.ndarray:
    rng = np.random.default_rng(0)
    a = rng.normal([5, 0, 0], 0.05, size=(6, 3))
    b = rng.normal([0, 5, 0], 0.05, size=(6, 3))
    X = np.vstack([a, b]).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def test_kmeans_learnable_takes_the_most_learnable_prompt_of_each_cluster():
    X = _two_blobs()
    p = np.array([0, 1, 0.5, 0.25, 1, 0] + [0, 0.75, 1, 0, 0, 1], dtype=float)
    picks = select("kmeans-learnable", X, 2, seed=0, pass_rates=p)
    assert sorted(picks.tolist()) == [2, 7]  # p(1-p) = 0.25 and 0.1875, the largest of each blob
    # more picks than clusters k-means can fill are made up by the most learnable rows left
    more = select("kmeans-learnable", X, 4, seed=0, pass_rates=p)
    assert len(set(more.tolist())) == 4 and {2, 7} <= set(more.tolist())


def test_kmeans_learnable_without_pass_rates_is_refused():
    from polymath.errors import SelectionError

    with pytest.raises(SelectionError, match="needs one probe pass rate per row; set curate.probe_k"):
        select("kmeans-learnable", _two_blobs(), 2, seed=0)


def test_learnability_metrics_by_hand():
    p = np.array([0.0, 0.5, 1.0, 0.25])
    frame = learnability_frame(p, [("kmeans-learnable", 0, np.array([1, 3])), ("random", 1, np.array([0, 2]))])
    values = frame.set_index(["strategy", "metric"])["value"]
    assert values["kmeans-learnable", "learnability"] == pytest.approx((0.25 + 0.1875) / 2)
    assert values["kmeans-learnable", "zero_variance_frac"] == 0.0
    assert values["random", "learnability"] == 0.0 and values["random", "zero_variance_frac"] == 1.0


def test_probe_options_are_checked_by_key():
    with pytest.raises(ValidationError, match="probe_k"):
        CurateConfig(probe_k=1)
    with pytest.raises(ValidationError, match="kmeans-learnable ranks prompts by the probe's pass rates: set "
                                              "curate.probe_k"):
        CurateConfig(strategy="kmeans-learnable")
    with pytest.raises(ValidationError, match="drop_zero_variance needs the probe's pass rates"):
        CurateConfig(drop_zero_variance=True)


def test_the_policy_encoder_without_the_model_stage_is_a_config_error(micro_config_path, tmp_path):
    from pipeline import curate, data
    from pipeline.config import load_config
    from polymath.errors import ConfigError
    from polymath.workspace import Workspace

    cfg = load_config(micro_config_path, ["curate.encoder=policy"])
    ws = Workspace(tmp_path)
    with pytest.raises(ConfigError, match="curate.encoder: policy needs the base model"):
        curate.run(cfg, ws, data=data.run(cfg, ws))


def test_probe_and_policy_encoder_through_the_stages(micro_config_path, tmp_path):
    from evaluation.store import Store
    from pipeline import curate, data, model
    from pipeline.config import load_config
    from pipeline.ingest import ingest_all
    from polymath.workspace import Workspace

    cfg = load_config(micro_config_path, ["curate.encoder=policy", "curate.probe_k=2", "curate.probe_max=60",
                                          "curate.strategy=kmeans-learnable", "curate.dedup_threshold=1.0"])
    ws = Workspace(tmp_path)
    data_run = data.run(cfg, ws)
    base = model.run(cfg, ws, data=data_run)
    chosen = curate.run(cfg, ws, data=data_run, model=base)
    assert chosen.manifest()["inputs"]["model"] == base.key
    probe = pd.read_parquet(chosen.dir / "curation_probe.parquet")
    assert len(probe) == 60 and (probe.k == 2).all() and probe.p.between(0, 1).all()
    assert (probe.p == probe.correct / probe.k).all()
    ingest_all(ws, [data_run, base, chosen])
    metrics = Store(ws.db_path).query(
        "SELECT strategy, metric, avg(value) AS v FROM curation_metrics "
        "WHERE metric IN ('learnability', 'zero_variance_frac') GROUP BY ALL")
    assert set(metrics.strategy) == {"kmeans-learnable", "random"}  # the random subsets are measured too
    assert len(Store(ws.db_path).query("SELECT * FROM curation_probe")) == 60
    assert curate.run(cfg, ws, data=data_run, model=base).skipped  # cached: the rerun probes nothing
