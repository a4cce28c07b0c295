"""Several data sources as domains of one run: config checks, loading, and three experts merged."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from curation.data import DataConfig, load_problems
from pipeline.config import PolymathConfig, load_config
from polymath.errors import ConfigError, DataError

DATA = Path(__file__).parent / "data"


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _sums(tmp_path: Path, n: int = 30) -> str:
    rng = random.Random(0)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 40), rng.randint(1, 40)
        rows.append({"question": f"What is {a} plus {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"})
    return _jsonl(tmp_path / "sums.jsonl", rows)


def _halves(tmp_path: Path, n: int = 30) -> str:
    rng = random.Random(1)
    rows = [{"problem": f"Halve {2 * (k := rng.randint(1, 60))}.", "solution": f"half is \\boxed{{{k}}}"} for _ in range(n)]
    return _jsonl(tmp_path / "halves.jsonl", rows)


def _three_sources(tmp_path: Path) -> list[dict]:
    return [
        {"format": "jsonl", "path": _sums(tmp_path), "fields": {"prompt": "question"}, "answer_format": "gsm8k",
         "domain": "sums", "test_fraction": 0.2},
        {"format": "jsonl", "path": _halves(tmp_path), "fields": {"prompt": "problem", "answer": "solution"},
         "answer_format": "boxed", "domain": "halves", "test_fraction": 0.2},
        {"format": "reasoning-gym", "domains": ["gcd"], "train_per_domain": 30, "test_per_domain": 6},
    ]


def test_three_sources_load_as_three_domains_with_their_own_verifiers(tmp_path):
    problems = load_problems(DataConfig(sources=_three_sources(tmp_path)))
    verifiers = {d: {p.metadata["verifier"] for p in problems.train if p.domain == d} for d in problems.domains()}
    assert verifiers == {"gcd": {"marker"}, "halves": {"math"}, "sums": {"numeric"}}
    assert len({p.id for p in problems.train + problems.test}) == len(problems.train) + len(problems.test)
    assert {p.domain for p in problems.test} == {"gcd", "halves", "sums"}


def test_one_source_in_the_old_keys_is_a_one_element_list(tmp_path):
    old = DataConfig(format="jsonl", path=_sums(tmp_path), fields={"prompt": "question"}, answer_format="gsm8k")
    (only,) = old.resolved_sources()
    assert only.path == old.path and only.answer_format == "gsm8k"
    assert [p.id for p in load_problems(old).train] == [p.id for p in load_problems(DataConfig(sources=[only])).train]


def test_two_sources_with_one_domain_are_a_config_error_naming_both(tmp_path):
    sources = _three_sources(tmp_path)
    sources[1]["domain"] = "sums"
    with pytest.raises(ValueError, match=r"data.sources\[0\] \(.*sums.jsonl\) and data.sources\[1\] .* both give "
                                         r"domain 'sums'"):
        DataConfig(sources=sources)


def test_a_domain_column_that_repeats_another_sources_domain_fails_at_loading(tmp_path):
    path = _jsonl(tmp_path / "tagged.jsonl", [{"prompt": "p1", "answer": "1", "d": "sums"}])
    sources = [_three_sources(tmp_path)[0], {"format": "jsonl", "path": path, "fields": {"domain": "d"}, "name": "tagged"}]
    with pytest.raises(DataError, match=r"data.sources\[0\].* and data.sources\[1\] \(tagged\) both give domain 'sums'"):
        load_problems(DataConfig(sources=sources))


def test_keys_beside_sources_are_refused():
    with pytest.raises(ValueError, match=r"data.sources is set, so data.format has no effect"):
        DataConfig(path="x.jsonl", format="jsonl", sources=[{"format": "reasoning-gym"}])


def test_a_verifier_that_does_not_fit_its_source_is_a_config_error_naming_the_source(tmp_path):
    sources = _three_sources(tmp_path)
    sources[1]["verifier"] = "numeric"
    with pytest.raises(ValueError, match=r"data.sources\[1\] \(.*halves.jsonl\): verifier 'numeric' does not fit "
                                         r"format 'jsonl' with answer_format 'boxed'"):
        PolymathConfig.model_validate({"data": {"sources": sources}})
    sources[1]["verifier"] = "reasoning-gym"
    with pytest.raises(ValueError, match=r"only reasoning-gym data has"):
        PolymathConfig.model_validate({"data": {"sources": sources}})
    sources[1]["verifier"] = "nope"
    with pytest.raises(ValueError, match=r"data.verifier: unknown 'nope'"):
        PolymathConfig.model_validate({"data": {"sources": sources}})


def test_the_answer_instruction_is_appended_to_every_prompt(tmp_path):
    src = {"format": "jsonl", "path": _sums(tmp_path), "fields": {"prompt": "question"}, "answer_format": "gsm8k",
           "answer_instruction": "answer-tag"}
    problems = load_problems(DataConfig(**src))
    assert all(p.prompt.endswith("inside <answer></answer> tags.") for p in problems.train + problems.test)
    custom = load_problems(DataConfig(**{**src, "answer_instruction": " Reply with a number."}))
    assert custom.train[0].prompt.endswith("? Reply with a number.")


def _micro_with_sources(tmp_path: Path) -> Path:
    spec = yaml.safe_load((DATA / "micro.yaml").read_text())
    spec["data"] = {"sources": _three_sources(tmp_path)}
    spec["curate"] = {"enabled": False}
    spec["merge"] = {"methods": ["task-arithmetic"]}
    path = tmp_path / "three.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_three_sources_train_three_experts_and_merge_them(tmp_path):
    from pipeline import data, evaluate, merge, model, train
    from polymath.workspace import Workspace

    cfg = load_config(_micro_with_sources(tmp_path))
    ws = Workspace(tmp_path / "ws")
    data_run = data.run(cfg, ws)
    base = model.run(cfg, ws, data=data_run)
    domains = train.expert_domains(cfg, data_run)
    assert domains == ["gcd", "halves", "sums"]
    experts = [train.run(cfg, ws, model=base, data=data_run, curate=None, domain=d) for d in domains]
    merged = merge.run(cfg, ws, model=base, data=data_run, curate=None, experts=experts, method="task-arithmetic")
    assert (merged.dir / "adapter" / "adapter_config.json").exists()
    scored = evaluate.run(cfg, ws, model=base, data=data_run, target=merged)
    import pandas as pd

    samples = pd.read_parquet(scored.dir / "eval_samples.parquet")
    assert sorted(samples.benchmark.unique()) == domains  # each domain scored by its own verifier


def test_status_knows_the_domains_of_static_sources_before_the_data_stage(tmp_path):
    from pipeline.plan import plan_runs
    from polymath.workspace import Workspace

    rows = plan_runs(load_config(_micro_with_sources(tmp_path)), Workspace(tmp_path / "empty"))
    assert [r.label for r in rows if r.stage == "train"] == ["expert:gcd", "expert:halves", "expert:sums"]


def test_a_bad_source_is_named_in_the_error(tmp_path):
    sources = _three_sources(tmp_path)
    sources[0]["fields"] = {"prompt": "nope"}
    with pytest.raises(DataError, match=r"data.sources\[0\] \(.*sums.jsonl\): .*field 'nope'"):
        load_problems(DataConfig(sources=sources))
    with pytest.raises(ConfigError, match="sources.1"):
        load_config(_micro_with_sources(tmp_path), ["data.sources=[{format: reasoning-gym}, {format: jsonl}]"])


def test_the_gpu_profile_has_three_sources_and_plans_three_experts_and_merges_without_a_gpu(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app
    from pipeline.plan import plan_runs
    from polymath.workspace import Workspace

    sums = _sums(tmp_path)
    halves = _halves(tmp_path)
    (tmp_path / "model").mkdir()
    sets = [f"model.path={tmp_path / 'model'}", f"data.sources.0.path={sums}", f"data.sources.0.test_path={sums}",
            f"data.sources.1.path={halves}", f"data.sources.1.test_path={halves}"]
    cfg = load_config("gpu-math", sets)
    assert cfg.model.load_options().dtype == "bfloat16" and cfg.train.use_vllm == "auto"
    assert [s.resolved_verifier() for s in cfg.data.resolved_sources()] == ["numeric", "math", "marker"]
    rows = plan_runs(cfg, Workspace(tmp_path / "ws"))
    assert [r.label for r in rows if r.stage == "train"] == ["expert:gcd", "expert:gsm8k", "expert:math"]
    assert {r.label for r in rows if r.stage == "merge"} >= {"merged:robustmerge", "merged:knots"}
    args = ["status", "-c", "gpu-math", "-w", str(tmp_path / "ws")] + [a for s in sets for a in ("--set", s)]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    with pytest.raises(ConfigError, match=r"data.sources is a list of 3; '5' is not an index of it"):
        load_config("gpu-math", ["data.sources.5.path=x"])
