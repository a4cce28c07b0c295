"""evaluate_model on a tiny random Qwen2 with a character tokenizer (the vLLM path: test_evaluation_vllm.py)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pydantic
import pytest
import torch
from transformers import TemperatureLogitsWarper, TopPLogitsWarper

from polymath.records import Problem
from evaluation import metrics
from evaluation.config import EvalConfig
from evaluation.hf_engine import hf_generate
from evaluation.sampling import EVAL_SAMPLE_COLUMNS, evaluate_model
from evaluation.store import Store
from polymath.errors import ConfigError, DataError, ModelError

from .sampling_model import PROBLEMS, first_char_scorer, model, tokenizer  # noqa: F401  (fixtures)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


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


def test_a_model_folder_is_sampled_on_the_gpu_when_there_is_one(monkeypatch, tmp_path: Path):
    from evaluation import sampling

    devices = []

    def fake_load(path, options=None, device=None):
        devices.append(device)
        raise RuntimeError("loaded")

    monkeypatch.setattr(sampling, "load_model", fake_load)
    for cuda in (False, True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        with pytest.raises(RuntimeError, match="loaded"):
            evaluate_model(str(tmp_path), None, PROBLEMS, EvalConfig(k=1, backend="hf"), first_char_scorer, "m", "r")
    assert devices == [None, "cuda"]
