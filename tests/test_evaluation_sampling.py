"""evaluate_model on a tiny random Qwen2 with a character tokenizer, and the vLLM path on a fake engine."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pydantic
import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from polymath.records import Problem
from evaluation import metrics
from evaluation.config import EvalConfig
from evaluation.hf_engine import hf_generate
from evaluation.sampling import EVAL_SAMPLE_COLUMNS, evaluate_model, resolve_backend
from evaluation.store import Store
from evaluation.vllm_engine import lora_request, vllm_generate
from polymath.prompting import PLAIN_SUFFIX
from polymath.errors import ConfigError, DataError, ModelError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHARS = "0123456789+-=?: abcdefghijklmnopqrstuvwxyz\nA"


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for c in sorted(set(CHARS)):
        vocab[c] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")


@pytest.fixture(scope="module")
def model(tokenizer) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1,
                         bos_token_id=None, tie_word_embeddings=True)
    return Qwen2ForCausalLM(config).eval()


PROBLEMS = {
    "arith": [Problem(f"a{i}", "arith", f"{i}+{i}=?", str(2 * i)) for i in range(5)],
    "words": [Problem("w0", "words", "abc", "cba"), Problem("w1", "words", "xyz", "zyx")],
}


def first_char_scorer(problem: Problem, completion: str) -> tuple[str | None, float]:
    answer = completion.strip()[:1] or None
    return answer, float(answer is not None and answer in "02468")


def test_evaluate_model_gives_k_scored_rows_per_problem(model, tokenizer, tmp_path: Path):
    config = EvalConfig(k=4, temperature=0.8, top_p=0.9, max_new_tokens=10, batch_size=2,
                        max_problems_per_benchmark=4)
    df = evaluate_model(model, tokenizer, PROBLEMS, config, first_char_scorer, "base", "run1")
    assert list(df.columns) == EVAL_SAMPLE_COLUMNS
    assert len(df) == (4 + 2) * 4
    assert df.groupby(["benchmark", "problem_id"]).size().eq(4).all()
    assert set(df.problem_id) == {"a0", "a1", "a2", "a3", "w0", "w1"}
    assert (df.groupby("problem_id").sample_idx.apply(sorted).map(tuple) == (0, 1, 2, 3)).all()
    assert df.mean_entropy.map(math.isfinite).all() and (df.mean_entropy > 0).all()
    assert df.sum_logprob.map(math.isfinite).all() and (df.sum_logprob < 0).all()
    assert df.n_tokens.between(1, 10).all()
    assert (df.n_tokens < 10).any(), "no completion reached EOS: the EOS path is untested"
    assert (df.correct == (df.score >= 1.0)).all()
    assert df.extracted_answer.equals(df.completion.map(lambda c: c.strip()[:1] or None))
    for _, g in df.groupby("problem_id"):
        g = g.sort_values("sample_idx")
        assert list(zip(g.n_bigrams, g.new_bigrams)) == metrics.bigram_novelty(list(g.completion))
    assert (df.eval_run == "run1").all() and (df.model_label == "base").all()

    store = Store(tmp_path / "polymath.duckdb")
    store.replace("eval_samples", df, {"eval_run": "run1", "model_label": "base"})
    summary = store.query("SELECT benchmark, k, n_problems FROM eval_summary ORDER BY ALL")
    assert summary.values.tolist() == [["arith", 1, 4], ["arith", 2, 4], ["arith", 4, 4],
                                       ["words", 1, 2], ["words", 2, 2], ["words", 4, 2]]


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(model, tokenizer):
    config = EvalConfig(k=3, temperature=1.0, max_new_tokens=8, seed=7)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = evaluate_model(model, tokenizer, PROBLEMS, config, first_char_scorer, "base", "r")
    assert torch.equal(torch.get_rng_state(), state)
    b = evaluate_model(model, tokenizer, PROBLEMS, config, first_char_scorer, "base", "r")
    assert a.equals(b)
    c = evaluate_model(model, tokenizer, PROBLEMS, config.model_copy(update={"seed": 8}),
                       first_char_scorer, "base", "r")
    assert not a.completion.equals(c.completion)


def _reference_stats(model, tokenizer, prompt: str, token_ids: tuple[int, ...], config: EvalConfig):
    """Entropy and log-probs of the tokens by one teacher-forced forward pass (dense)."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + list(token_ids)])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1 : -1]
    scores = TemperatureLogitsWarper(config.temperature)(None, logits)
    scores = TopPLogitsWarper(config.top_p)(None, scores)
    logp = torch.log_softmax(scores, dim=-1)
    p = logp.exp()
    entropy = -(p * torch.where(p > 0, logp, 0.0)).sum(-1)
    chosen = logp.gather(1, torch.tensor(token_ids)[:, None]).squeeze(1)
    return entropy.mean().item(), chosen.sum().item()


def test_token_statistics_match_a_teacher_forced_reference(model, tokenizer):
    config = EvalConfig(k=3, temperature=0.7, top_p=0.9, max_new_tokens=12, batch_size=4)
    prompts = ["1+1=?\nAnswer: ", "abc\nAnswer: ", "23+4=?\nAnswer: "]  # unequal lengths: left padding
    samples = hf_generate(model, tokenizer, prompts, config, seed=0)
    assert [len(s) for s in samples] == [3, 3, 3]
    for prompt, group in zip(prompts, samples):
        for s in group:
            entropy, logprob = _reference_stats(model, tokenizer, prompt, s.token_ids, config)
            assert s.mean_entropy == pytest.approx(entropy, abs=1e-4)
            assert s.sum_logprob == pytest.approx(logprob, abs=1e-3)
            if s.n_tokens < config.max_new_tokens:
                assert s.token_ids[-1] == 1  # an early stop is an EOS, counted in the statistics
            if 1 in s.token_ids:
                assert s.token_ids.index(1) == len(s.token_ids) - 1  # nothing after the first EOS
    assert any(s.n_tokens < config.max_new_tokens for group in samples for s in group)


def test_draws_follow_the_warped_distribution(model, tokenizer):
    """First tokens of many samples against the temperature + top-p distribution (chi-square goodness of fit)."""
    from scipy.stats import chisquare

    config = EvalConfig(k=4000, temperature=0.6, top_p=0.8, max_new_tokens=1, batch_size=1)
    prompt = "12+3=?\nAnswer: "
    [group] = hf_generate(model, tokenizer, [prompt], config, seed=11)
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = model(ids).logits[0, -1]
    scores = TopPLogitsWarper(0.8)(None, TemperatureLogitsWarper(0.6)(None, logits[None]))[0]
    expected = torch.softmax(scores, dim=-1)
    counts = torch.bincount(torch.tensor([s.token_ids[0] for s in group]), minlength=len(expected)).float()
    support = expected > 0
    assert counts[~support].sum() == 0  # nothing outside the nucleus is ever drawn
    test = chisquare(counts[support].numpy(), (expected[support] * counts.sum()).numpy())
    assert test.pvalue > 1e-3


def test_greedy_decoding(model, tokenizer):
    config = EvalConfig(k=1, temperature=0.0, max_new_tokens=6)
    [[s]] = hf_generate(model, tokenizer, ["5+5=?\nAnswer: "], config, seed=0)
    enc = tokenizer(["5+5=?\nAnswer: "], return_tensors="pt", add_special_tokens=False)
    greedy = model.generate(**enc, do_sample=False, max_new_tokens=6, pad_token_id=0, eos_token_id=1)
    assert s.token_ids == tuple(greedy[0, enc["input_ids"].shape[1] :].tolist()[: s.n_tokens])
    assert s.mean_entropy > 0  # statistics of the temperature-1 distribution


def test_an_adapter_is_applied_and_taken_out_again(model, tokenizer, tmp_path: Path):
    import copy

    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                 init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    config = EvalConfig(k=2, temperature=1.0, max_new_tokens=8)
    before = [n for n, _ in model.named_modules()]
    base = evaluate_model(model, tokenizer, PROBLEMS, config, first_char_scorer, "base", "r")
    tuned = evaluate_model(model, tokenizer, PROBLEMS, config, first_char_scorer, "expert:arith", "r",
                           adapter_dir=tmp_path / "adapter")
    assert [n for n, _ in model.named_modules()] == before
    assert not base.sum_logprob.equals(tuned.sum_logprob)
    again = evaluate_model(model, tokenizer, PROBLEMS, config, first_char_scorer, "base", "r")
    # the same samples again; the statistics agree to float32 rounding (a leftover adapter moves them by far more)
    floats = ["score", "mean_entropy", "sum_logprob"]
    assert base.drop(columns=floats).equals(again.drop(columns=floats))
    assert (base[floats] - again[floats]).abs().max().max() < 1e-5
    with pytest.raises(ModelError, match="adapter_config.json"):
        evaluate_model(model, tokenizer, PROBLEMS, config, first_char_scorer, "x", "r", adapter_dir=tmp_path)


def test_bad_inputs_are_named(model, tokenizer):
    config = EvalConfig(k=1, max_new_tokens=2)
    with pytest.raises(DataError, match="benchmark 'empty' has no problems"):
        evaluate_model(model, tokenizer, {"empty": []}, config, first_char_scorer, "base", "r")
    twice = {"b": [PROBLEMS["words"][0], PROBLEMS["words"][0]]}
    with pytest.raises(DataError, match="problem id 'w0' twice"):
        evaluate_model(model, tokenizer, twice, config, first_char_scorer, "base", "r")
    with pytest.raises(ConfigError, match="scorer must return"):
        evaluate_model(model, tokenizer, PROBLEMS, config, lambda p, c: 1.0, "base", "r")


def test_config_is_validated():
    with pytest.raises(pydantic.ValidationError, match="extra"):
        EvalConfig(n_samples=4)
    with pytest.raises(pydantic.ValidationError, match="greedy"):
        EvalConfig(k=4, temperature=0)
    with pytest.raises(pydantic.ValidationError):
        EvalConfig(top_p=0)
    assert EvalConfig(k=1, temperature=0).k == 1


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
        with pytest.raises(ConfigError, match="pip install"):
            resolve_backend("vllm", "/some/model")


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


def test_hit_cap_and_no_answer_are_recorded_per_sample(model, tokenizer):
    config = EvalConfig(k=4, temperature=1.0, max_new_tokens=6, batch_size=4)
    df = evaluate_model(model, tokenizer, PROBLEMS, config, first_char_scorer, "base", "run1")
    # a sample is cut exactly when it used the whole cap without an EOS
    assert ((df.n_tokens == 6) & ~df.completion.isna()).any()
    assert df.hit_cap.any() and not df.hit_cap.all()
    assert (df[df.hit_cap].n_tokens == 6).all()
    assert (df.no_answer == df.extracted_answer.isna()).all()


def _with_solutions(length: int) -> dict[str, list[Problem]]:
    return {"arith": [Problem(f"s{i}", "arith", f"{i}+{i}=?", "x", solution="a" * (length - i)) for i in range(3)]}


def test_token_cap_is_sized_from_the_longest_solution(model, tokenizer):
    from evaluation.sampling import token_cap

    problems = _with_solutions(20)
    # 20 characters + EOS = 21 tokens; 1.5x margin
    assert token_cap(problems, tokenizer, None) == 32
    assert token_cap(problems, tokenizer, 40) == 40
    assert token_cap(PROBLEMS, tokenizer, None) == 256  # no solutions: the fallback
    # the longest solution of any benchmark sizes the cap of all (a drifting completion can still end)
    assert token_cap({**PROBLEMS, **problems}, tokenizer, None) == 32
    df = evaluate_model(model, tokenizer, _with_solutions(20), EvalConfig(k=2, max_new_tokens=None), first_char_scorer,
                        "base", "run1")
    assert df.n_tokens.max() <= 32


def test_a_cap_below_the_longest_solution_names_benchmark_length_and_key(model, tokenizer):
    with pytest.raises(ConfigError) as err:
        evaluate_model(model, tokenizer, _with_solutions(20), EvalConfig(k=2, max_new_tokens=12), first_char_scorer,
                       "base", "run1")
    message = str(err.value)
    assert "'arith'" in message and "21 tokens" in message and "evaluate.max_new_tokens" in message


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

    monkeypatch.setattr(sampling, "load_engine", fake_engine)
    monkeypatch.setattr(sampling, "vllm_available", lambda: True)
    with pytest.raises(RuntimeError, match="stop"):
        evaluate_model(str(tmp_path), None, PROBLEMS, EvalConfig(k=1, backend="vllm"), first_char_scorer, "m", "r",
                       adapter_dir=tmp_path)
    assert seen["max_lora_rank"] == 128 and seen["enable_lora"]
