"""Keys that cover every input: a changed file, new weights at a model path, or a setting a stage samples with
makes exactly the runs that read it stale, and a rerun recomputes them."""

from __future__ import annotations

import json
import shutil

import pytest

from pipeline import curate as curate_stage, data as data_stage, model as model_stage
from pipeline.config import load_config
from pipeline.plan import plan_runs
from polymath.workspace import Workspace


def _states(cfg, ws) -> dict[tuple[str, str], tuple[str, str]]:
    return {(r.stage, r.label): (r.state, r.why) for r in plan_runs(cfg, ws)}


def _jsonl(path, n: int) -> None:
    rows = [{"prompt": f"{i} + {i} =", "answer": str(2 * i), "domain": "add" if i % 2 else "double"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture()
def file_config(micro_config_path, tmp_path):
    source = tmp_path / "problems.jsonl"
    _jsonl(source, 60)
    overrides = ["data.format=jsonl", f"data.path={source}", "data.fields.domain=domain", "data.test_fraction=0.2",
                 "data.strip_prefixes=[]", "data.strip_suffixes=[]", "curate.k=8", "curate.n_clusters=2"]
    return load_config(micro_config_path, overrides), source


def test_appending_a_line_to_a_source_file_makes_the_data_and_everything_after_it_stale(file_config, tmp_path):
    cfg, source = file_config
    ws = Workspace(tmp_path / "ws")
    data = data_stage.run(cfg, ws)
    curate_stage.run(cfg, ws, data=data)
    assert _states(cfg, ws)[("data", "data")][0] == "finished"

    with source.open("a") as fh:
        fh.write(json.dumps({"prompt": "99 + 99 =", "answer": "198", "domain": "add"}) + "\n")
    states = _states(cfg, ws)
    assert states[("data", "data")] == ("stale", f"input changed: file:{source.resolve()}")
    assert states[("curate", "curate")][0] == "stale"
    again = data_stage.run(cfg, ws)
    assert not again.skipped and again.key != data.key
    assert again.manifest()["summary"]["rows_read"] == 61

    source.touch()  # a new mtime, the same bytes: the key stands
    assert data_stage.run(cfg, ws).skipped


def test_new_weights_at_a_model_path_make_the_base_model_stale(micro_config_path, tmp_path):
    from safetensors.torch import load_file, save_file

    cfg = load_config(micro_config_path)
    ws = Workspace(tmp_path / "ws")
    data = data_stage.run(cfg, ws)
    given = tmp_path / "given-model"
    shutil.copytree(model_stage.run(cfg, ws, data=data).dir / "model", given)
    path_cfg = load_config(micro_config_path, ["model.source=path", f"model.path={given}"])
    first = model_stage.run(path_cfg, ws, data=data)
    assert _states(path_cfg, ws)[("model", "base")][0] == "finished"

    weights = next(given.glob("*.safetensors"))
    tensors = load_file(weights)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, weights, metadata={"format": "pt"})
    states = _states(path_cfg, ws)
    assert states[("model", "base")] == ("stale", f"input changed: file:{given.resolve()}")
    assert all(s != "finished" for (stage, _), (s, _) in states.items() if stage in ("train", "evaluate"))
    assert states[("data", "data")][0] == "finished"
    second = model_stage.run(path_cfg, ws, data=data)
    assert not second.skipped and second.key != first.key


def test_a_sampling_setting_the_probe_reads_makes_the_curation_stale(micro_config_path, tmp_path):
    probe = ["curate.strategy=kmeans-learnable", "curate.probe_k=2", "curate.probe_max=40"]
    cfg = load_config(micro_config_path, probe)
    ws = Workspace(tmp_path / "ws")
    data = data_stage.run(cfg, ws)
    base = model_stage.run(cfg, ws, data=data)
    curate_stage.run(cfg, ws, data=data, model=base)
    assert _states(cfg, ws)[("curate", "curate")][0] == "finished"

    longer = load_config(micro_config_path, [*probe, "evaluate.max_new_tokens=128"])
    states = _states(longer, ws)
    assert states[("curate", "curate")][0] == "stale" and "max_new_tokens" in states[("curate", "curate")][1]
    assert states[("data", "data")][0] == states[("model", "base")][0] == "finished"
    assert not curate_stage.run(longer, ws, data=data, model=base).skipped
    # without the probe the curation does not sample: the same change leaves it alone
    plain = load_config(micro_config_path)
    curate_stage.run(plain, ws, data=data, model=base)
    plain_longer = load_config(micro_config_path, ["evaluate.max_new_tokens=128"])
    assert _states(plain_longer, ws)[("curate", "curate")][0] == "finished"
