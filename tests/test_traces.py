"""Worked solutions of the embedded domains: hand-checked formats, forks, and answers that match the reference."""

import random
from collections import Counter

import pytest

from curation.domains import load_embedded
from curation.traces import trace
from polymath.answers import final_answer


def test_chain_sum_running_sums_left_to_right_and_right_to_left():
    meta = {"expression": "12 + 7 - 25"}
    assert trace("chain_sum", meta, "-6") == "12+7=19, 19-25=-6. Answer: -6"
    orders = {trace("chain_sum", meta, "-6", random.Random(s)) for s in range(20)}
    assert orders == {"12+7=19, 19-25=-6. Answer: -6", "-25+7=-18, -18+12=-6. Answer: -6"}


def test_gcd_euclid_steps_and_the_swap_fork():
    assert trace("gcd", {"numbers": [84, 60]}, "12") == "84%60=24, 60%24=12, 24%12=0. Answer: 12"
    forks = {trace("gcd", {"numbers": [34, 79]}, "1", random.Random(s)) for s in range(20)}
    assert forks == {"79%34=11, 34%11=1, 11%1=0. Answer: 1", "34%79=34, 79%34=11, 34%11=1, 11%1=0. Answer: 1"}


def test_leg_counting_products_in_any_order_then_sums():
    meta = {"animals": {"cow": 3, "spider": 1}}
    assert trace("leg_counting", meta, "20") == "cow 3*4=12, spider 1*8=8, 12+8=20. Answer: 20"
    orders = {trace("leg_counting", meta, "20", random.Random(s)) for s in range(20)}
    assert "spider 1*8=8, cow 3*4=12, 8+12=20. Answer: 20" in orders and len(orders) == 2


def test_spell_backward_letters_last_to_first():
    assert trace("spell_backward", {"word": "planet"}, "tenalp") == "t e n a l p. Answer: tenalp"


def test_a_trace_that_disagrees_with_the_reference_is_refused():
    with pytest.raises(ValueError, match="reference answer"):
        trace("gcd", {"numbers": [84, 60]}, "6")
    with pytest.raises(ValueError, match="no trace format"):
        trace("maze", {}, "1")


def test_every_embedded_problem_has_a_solution_ending_in_its_answer():
    train, test = load_embedded(train_per_domain=300, test_per_domain=20)
    lengths = Counter()
    for p in train + test:
        assert final_answer(p.solution) == p.answer, p
        lengths[p.domain] = max(lengths[p.domain], len(p.solution))
    # a chain before the answer: 20-100 characters (tokens of the character model) in every domain
    assert set(lengths) == {"arithmetic", "gcd", "legs", "reverse"}
    assert all(20 <= n <= 100 for n in lengths.values()), lengths
    # both orders of a fork appear across problems
    arithmetic = [p for p in train if p.domain == "arithmetic"]
    left_to_right = Counter(p.solution.startswith("".join(p.metadata["expression"].split()[:2])) for p in arithmetic)
    assert left_to_right[True] > 50 and left_to_right[False] > 50
