"""The vLLM path of evaluate_model on an engine with vLLM's interface, and on a real one where installed."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from evaluation.config import EvalConfig
from evaluation.sampling import evaluate_model, resolve_backend
from evaluation.vllm_engine import lora_request, vllm_generate
from polymath.errors import ConfigError, ModelError
from polymath.prompting import PLAIN_SUFFIX

from .sampling_model import PROBLEMS, first_char_scorer, model, tokenizer  # noqa: F401  (fixtures)


# -- vLLM path, on an engine with vLLM's interface -----------------------------


@dataclass
class FakeLogprob:
    logprob: float


@dataclass
class FakeCompletion:
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[dict[int, FakeLogprob]] | None
    cumulative_logprob: float | None = None


@dataclass
class FakeRequestOutput:
    outputs: list[FakeCompletion]


@dataclass
class FakeParams:
    n: int
    temperature: float
    top_p: float
    max_tokens: int
    logprobs: int
    seed: int


@dataclass
class FakeLLM:
    """Answers every prompt with n completions: the prompt's first character repeated i + 1 times."""

    calls: list = field(default_factory=list)

    def generate(self, prompts, sampling_params, lora_request=None):
        self.calls.append((list(prompts), sampling_params, lora_request))
        out = []
        for prompt in prompts:
            completions = []
            for i in reversed(range(sampling_params.n)):  # out of order: the index decides
                ids = [10 + i] * (i + 1) + [1]
                top = [{t: FakeLogprob(math.log(0.5)), 99: FakeLogprob(math.log(0.25)),
                        98: FakeLogprob(math.log(0.25))} for t in ids]
                completions.append(FakeCompletion(i, prompt[0] * (i + 1), ids, top))
            out.append(FakeRequestOutput(completions))
        return out


def test_vllm_generate_reads_text_tokens_and_logprobs():
    config = EvalConfig(k=3, temperature=0.9, top_p=0.95, max_new_tokens=16, vllm_logprobs=5, backend="vllm")
    engine = FakeLLM()
    samples = vllm_generate(engine, ["ab", "cd"], config, seed=3, lora="LORA", params_cls=FakeParams)
    _, params, lora = engine.calls[0]
    assert params == FakeParams(n=3, temperature=0.9, top_p=0.95, max_tokens=16, logprobs=5, seed=3)
    assert lora == "LORA"
    assert [s.text for s in samples[1]] == ["c", "cc", "ccc"]
    s = samples[0][2]
    assert s.n_tokens == 4 and s.token_ids == (12, 12, 12, 1)
    entropy = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert s.mean_entropy == pytest.approx(entropy)
    assert s.sum_logprob == pytest.approx(4 * math.log(0.5))


def test_evaluate_model_runs_a_vllm_engine(tokenizer, monkeypatch):
    import evaluation.vllm_engine as vllm_engine

    engine = FakeLLM()
    real = vllm_engine.vllm_generate
    monkeypatch.setattr("evaluation.sampling.vllm_generate",
                        lambda *a, **kw: real(*a, **kw, params_cls=FakeParams))
    config = EvalConfig(k=2, max_new_tokens=4)  # backend auto: an engine object means vLLM
    df = evaluate_model(engine, tokenizer, PROBLEMS, config, first_char_scorer, "merged:ties", "r")
    assert len(df) == 7 * 2
    assert df.n_tokens.tolist()[:2] == [2, 3]
    assert engine.calls[0][0][0] == "0+0=?" + PLAIN_SUFFIX


def test_lora_request_for_an_adapter_folder(tmp_path: Path):
    @dataclass
    class FakeLoRARequest:
        lora_name: str
        lora_int_id: int
        lora_path: str

    (tmp_path / "adapter_config.json").write_text("{}")
    a = lora_request(tmp_path, "expert:math", request_cls=FakeLoRARequest)
    b = lora_request(tmp_path, "expert:math", request_cls=FakeLoRARequest)
    assert a == b and a.lora_int_id > 0 and a.lora_path == str(tmp_path)
    with pytest.raises(ModelError, match="adapter_config.json"):
        lora_request(tmp_path / "missing", "x", request_cls=FakeLoRARequest)


def test_backend_resolution(model):
    engine = FakeLLM()
    assert resolve_backend("auto", model) == "hf"
    assert resolve_backend("auto", engine) == "vllm"
    assert resolve_backend("hf", engine) == "hf"
    with pytest.raises(ConfigError, match="in-memory"):
        resolve_backend("vllm", model)
    with pytest.raises(ConfigError, match="hf, vllm or auto"):
        resolve_backend("tpu", model)
    if not _vllm_installed():
        assert resolve_backend("auto", "/some/model") == "hf"
        with pytest.raises(ConfigError, match="make install-gpu"):
            resolve_backend("vllm", "/some/model")


def test_the_install_hint_names_an_extra_and_a_target_that_exist():
    import tomllib

    from evaluation.vllm_engine import GPU_EXTRA, INSTALL_HINT

    root = Path(__file__).resolve().parent.parent
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("vllm") for dep in extras[GPU_EXTRA])
    target = INSTALL_HINT.split()[1]
    assert f"\n{target}:" in (root / "Makefile").read_text()


def _vllm_installed() -> bool:
    from evaluation.vllm_engine import vllm_available

    return vllm_available()


vllm_real = pytest.mark.skipif(
    not (_vllm_installed() and torch.cuda.is_available()), reason="vLLM and a CUDA GPU are needed"
)


@vllm_real
@pytest.mark.slow
def test_real_vllm_engine_on_a_saved_tiny_model(model, tokenizer, tmp_path: Path):
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    config = EvalConfig(k=2, max_new_tokens=8, backend="vllm", vllm_logprobs=len(tokenizer))
    df = evaluate_model(str(tmp_path / "model"), tokenizer, PROBLEMS, config, first_char_scorer, "base", "r")
    assert len(df) == 7 * 2
    assert df.mean_entropy.map(math.isfinite).all() and (df.mean_entropy > 0).all()


def test_vllm_max_lora_rank_follows_the_adapter(tmp_path: Path, monkeypatch):
    import json

    from evaluation import sampling, vllm_engine

    assert [vllm_engine.max_lora_rank(r) for r in (1, 5, 16, 48, 64, 65, 300, 512)] == [1, 8, 16, 64, 64, 128, 320,
                                                                                       512]
    with pytest.raises(ConfigError, match="--rank 512"):
        vllm_engine.max_lora_rank(640)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 16, "rank_pattern": {"q_proj": 96}}))
    assert vllm_engine.adapter_rank(tmp_path) == 96

    # an exact merge of 5 rank-16 experts (rank 80) reaches vLLM with max_lora_rank 128, not the default 64
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 80}))
    seen = {}

    def fake_engine(model, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop")

    monkeypatch.setattr(vllm_engine, "load_engine", fake_engine)
    vllm_engine.release_engine()
    monkeypatch.setattr(sampling, "vllm_available", lambda: True)
    monkeypatch.setattr(vllm_engine, "vllm_available", lambda: True)
    with pytest.raises(RuntimeError, match="stop"):
        evaluate_model(str(tmp_path), None, PROBLEMS, EvalConfig(k=1, backend="vllm"), first_char_scorer, "m", "r",
                       adapter_dir=tmp_path)
    assert seen["max_lora_rank"] == 128 and seen["enable_lora"]


def test_one_engine_per_process_serves_every_adapter_and_is_rebuilt_only_for_a_larger_rank(
        tokenizer, tmp_path: Path, monkeypatch):
    import json

    from evaluation import sampling, vllm_engine

    built, released = [], []

    class CountedLLM(FakeLLM):
        def __init__(self, **kwargs):
            super().__init__()
            self.kwargs = kwargs
            self.llm_engine = type("E", (), {"shutdown": lambda _: released.append(self)})()

    monkeypatch.setattr(vllm_engine, "load_engine", lambda model, **kw: built.append(CountedLLM(**kw)) or built[-1])
    monkeypatch.setattr(vllm_engine, "vllm_available", lambda: True)
    real = vllm_engine.vllm_generate
    monkeypatch.setattr(sampling, "vllm_generate", lambda *a, **kw: real(*a, **kw, params_cls=FakeParams))
    monkeypatch.setattr(vllm_engine, "lora_request", lambda folder, name: str(folder))
    monkeypatch.setattr(sampling, "lora_request", lambda folder, name: str(folder))
    vllm_engine.release_engine()
    (tmp_path / "base").mkdir()
    adapters = {}
    for name, rank in (("scale-0.5", 16), ("scale-1", 16), ("expert", 16), ("merged-r80", 80)):
        adapters[name] = tmp_path / name
        adapters[name].mkdir()
        (adapters[name] / "adapter_config.json").write_text(json.dumps({"r": rank}))
    config = EvalConfig(k=1, max_new_tokens=4, backend="vllm", vllm_chunk_prompts=3)

    def evaluate(adapter):
        evaluate_model(str(tmp_path / "base"), tokenizer, PROBLEMS, config, first_char_scorer, "m", "r",
                       adapter_dir=adapters[adapter] if adapter else None)

    for adapter in ("scale-0.5", "scale-1", None, "expert"):
        evaluate(adapter)
    assert len(built) == 1 and not released  # the sweep's scales, the base and an expert: one engine
    assert built[0].kwargs["max_lora_rank"] == 16 and built[0].kwargs["gpu_memory_utilization"] == 0.85
    prompts_per_call = [len(prompts) for prompts, _, _ in built[0].calls]
    assert max(prompts_per_call) == 3 and sum(prompts_per_call) == 4 * 7  # sent in chunks of 3 prompts
    assert [lora for _, _, lora in built[0].calls[-3:]] == [str(adapters["expert"])] * 3
    evaluate("merged-r80")  # a rank the engine cannot serve: released, and one built for rank 128
    assert len(built) == 2 and released == [built[0]] and built[1].kwargs["max_lora_rank"] == 128
    evaluate("scale-1")  # the larger engine serves the smaller adapters too
    assert len(built) == 2
    vllm_engine.release_engine()
    assert released == built
