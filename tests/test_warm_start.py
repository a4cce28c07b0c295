"""The tiny model's warm start: band check, per-domain weights, probe split and the stopping rule."""

import pytest

from curation.domains import load_embedded
from polymath.records import Problem
from polymath.errors import ModelError
from training.models import TinyModelConfig, build_char_tokenizer, build_tiny_model
from training.warm_start import band_distance, domain_weights, in_band, split_probe, warm_start

BAND = (0.25, 0.5)
TINY = dict(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64, sft_batch_size=8)


def test_weights_push_slow_domains_and_hold_back_quick_ones():
    w = domain_weights({"slow": 0.0, "mid": 0.3, "middle": 0.375, "quick": 0.45, "done": 0.5, "over": 0.9}, BAND)
    assert w["slow"] == 2.0 and w["mid"] == 1.0 and w["middle"] == 1.0
    assert w["quick"] == pytest.approx(1 - 0.9 * (0.45 - 0.375) / 0.125)
    assert w["done"] == pytest.approx(0.1) and w["over"] == pytest.approx(0.1)  # a floor: never forgotten
    assert domain_weights({"a": 0.125}, BAND)["a"] == pytest.approx(1.5)


def test_band_distance_sums_what_lies_outside():
    assert band_distance({"a": 0.3, "b": 0.45}, BAND) == 0.0
    assert band_distance({"a": 0.1, "b": 0.6, "c": 0.3}, BAND) == pytest.approx(0.15 + 0.1)


def test_in_band_needs_every_domain_inside():
    assert in_band({"a": 0.25, "b": 0.5}, BAND)
    assert not in_band({"a": 0.25, "b": 0.51}, BAND)
    assert not in_band({}, BAND)


def test_probe_is_held_out_per_domain():
    problems = [Problem(f"{d}{i}", d, "q", "a", solution="Answer: a") for d in "xy" for i in range(10)]
    examples, probe = split_probe(problems, 3)
    assert {d: [p.id for p in ps] for d, ps in probe.items()} == {"x": ["x7", "x8", "x9"], "y": ["y7", "y8", "y9"]}
    assert len(examples) == 14 and not {p.id for p in examples} & {"x7", "y9"}
    # a domain too small to spare a probe keeps all its problems and is not checked
    assert split_probe(problems[:5], 3)[1] == {}


def _run(scorer, steps=8, **cfg):
    train, _ = load_embedded(["arithmetic", "reverse"], train_per_domain=40, test_per_domain=1)
    config = TinyModelConfig(**TINY, sft_steps=steps, probe_every=2, probe_problems=4, probe_samples=2, **cfg)
    tok = build_char_tokenizer([p.prompt for p in train] + [p.solution for p in train])
    model = build_tiny_model(config, len(tok))
    return warm_start(model, tok, train, config, scorer)


def test_the_warm_start_stops_at_the_first_check_inside_the_band():
    calls = []

    def scorer(problem, completion):
        calls.append(problem.domain)
        return float(len(calls) % 3 == 0)  # a third right: inside [0.25, 0.5]

    summary = _run(scorer)
    assert summary["sft_stopped"] == "in_band" and summary["sft_steps"] == 2 and summary["sft_kept_step"] == 2
    check = summary["sft_probe"][0]
    assert set(check["confirm_accuracy"]) == {"arithmetic", "reverse"}
    assert summary["sft_kept_accuracy"] == check["pooled_accuracy"]
    assert set(summary["sft_probe"][0]["accuracy"]) == {"arithmetic", "reverse"}
    assert summary["sft_examples"] == 80 - 2 * 4


def test_the_warm_start_computes_on_its_pinned_threads_whatever_the_process_uses():
    # its weights change with the thread count from four threads on: a pinned count must hold on any machine
    import torch

    seen = []

    def scorer(problem, completion):
        seen.append(torch.get_num_threads())
        return 0.0

    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        _run(scorer, steps=2, threads=2)
        assert set(seen) == {2} and torch.get_num_threads() == 3  # restored afterwards
    finally:
        torch.set_num_threads(before)


def test_the_warm_start_runs_on_below_the_band_and_stops_above_it():
    below = _run(lambda p, c: 0.0)
    assert below["sft_stopped"] == "max_steps" and below["sft_steps"] == 8 and len(below["sft_probe"]) == 4
    assert below["sft_kept_step"] == 8
    assert below["sft_probe"][0]["weights"] == {"arithmetic": 2.0, "reverse": 2.0}
    above = _run(lambda p, c: 1.0)
    assert above["sft_stopped"] == "above_band" and above["sft_steps"] == 2


def test_an_overshoot_keeps_the_check_closest_to_the_band():
    calls = []

    def scorer(problem, completion):
        calls.append(1)
        return float(len(calls) > 16)  # step 2: nothing right (below); step 4: everything right (above)

    summary = _run(scorer)
    assert summary["sft_stopped"] == "above_band" and summary["sft_steps"] == 4
    assert summary["sft_kept_step"] == 2 and summary["sft_kept_accuracy"] == {"arithmetic": 0.0, "reverse": 0.0}
    assert "kept step 2" in summary["sft_kept_because"]


def test_a_lucky_probe_in_the_band_is_not_confirmed():
    calls = []

    def scorer(problem, completion):
        calls.append(1)
        # the first probe (16 samples) lands in the band; its confirmation samples and later checks are all wrong
        return float(len(calls) <= 16 and len(calls) % 3 == 0)

    summary = _run(scorer)
    first = summary["sft_probe"][0]
    assert first["accuracy"] == {"arithmetic": 0.25, "reverse": 0.375} and "pooled_accuracy" in first
    assert summary["sft_stopped"] == "max_steps" and summary["sft_steps"] == 8
    assert summary["sft_kept_step"] == 2  # still the closest check: pooled, then 0 right at every later one


def test_without_a_check_in_band_the_closest_weights_are_restored():
    calls = []

    def scorer(problem, completion):
        calls.append(1)
        # checks at steps 2, 4, 6, 8 (16 samples each): 20%, 0%, 0%, 0% right
        return float(len(calls) <= 16 and len(calls) % 5 == 0)

    train, _ = load_embedded(["arithmetic", "reverse"], train_per_domain=40, test_per_domain=1)
    config = TinyModelConfig(**TINY, sft_steps=8, probe_every=2, probe_problems=4, probe_samples=2)
    tok = build_char_tokenizer([p.prompt for p in train] + [p.solution for p in train])
    model = build_tiny_model(config, len(tok))
    summary = warm_start(model, tok, train, config, scorer)
    assert summary["sft_stopped"] == "max_steps" and summary["sft_kept_step"] == 2
    # step 2: arithmetic 1/8 right (0.125 below the band), reverse 2/8 (inside); later checks 0 right
    assert [round(h["band_distance"], 3) for h in summary["sft_probe"]] == [0.125, 0.5, 0.5, 0.5]


def test_problems_without_solutions_are_refused():
    config = TinyModelConfig(**TINY, sft_steps=1, probe_problems=0)
    problems = [Problem("a", "d", "1+1", "2")]
    tok = build_char_tokenizer(["1+1", "2"])
    with pytest.raises(ModelError, match="worked solution"):
        warm_start(build_tiny_model(config, len(tok)), tok, problems, config, lambda p, c: 0.0)


def test_band_must_be_ordered():
    with pytest.raises(ValueError, match="band"):
        TinyModelConfig(band=(0.6, 0.4))
