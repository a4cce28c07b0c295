import pytest

from curation.domains import load_embedded
from curation.records import Problem
from polymath.errors import ConfigError
from training.verifiers import extract_answer, get_verifier, score


@pytest.fixture(scope="module")
def embedded():
    train, _ = load_embedded(train_per_domain=5, test_per_domain=1)
    return train


def test_reasoning_gym_scorer_accepts_the_reference_and_rejects_others(embedded):
    for p in embedded:
        assert score(p, p.answer) == (p.answer, 1.0)
        assert score(p, f"<answer>{p.answer}</answer>")[1] == 1.0
        assert score(p, "zzz")[1] < 1.0


def test_extraction_order():
    assert extract_answer("think... <answer>12</answer>") == "12"
    assert extract_answer("so the result is \\boxed{\\frac{3}{4}} done") == "\\frac{3}{4}"
    assert extract_answer("work\n#### 1,000\n") == "1,000"
    assert extract_answer("blah\nThe final answer is: 9") == "9"
    assert extract_answer("  17\nmore") == "17"
    assert extract_answer("") is None


def test_numeric_gsm8k_match():
    p = Problem("g1", "math", "q", "1234", {"verifier": "numeric"})
    assert score(p, "#### 1,234")[1] == 1.0
    assert score(p, "The answer is: 1234.0")[1] == 1.0
    assert score(p, "#### 1235")[1] == 0.0
    assert score(p, "no number")[1] == 0.0


def test_math_verify_equivalence():
    p = Problem("m1", "math", "q", "\\frac{1}{2}", {"verifier": "math"})
    assert score(p, "\\boxed{0.5}")[1] == 1.0
    assert score(p, "\\boxed{\\frac{2}{4}}")[1] == 1.0
    assert score(p, "\\boxed{3}")[1] == 0.0


def test_unknown_verifier_is_a_config_error():
    with pytest.raises(ConfigError, match="data.verifier"):
        get_verifier("nope")
