import pytest

from curation.domains import load_embedded
from polymath.records import Problem
from polymath.errors import ConfigError
from polymath.verifiers import extract_answer, get_verifier, score


@pytest.fixture(scope="module")
def embedded():
    train, _ = load_embedded(train_per_domain=5, test_per_domain=1)
    return train


def test_reasoning_gym_scorer_accepts_the_reference_and_rejects_others(embedded):
    for p in embedded:
        p = Problem(p.id, p.domain, p.prompt, p.answer, {**p.metadata, "verifier": "reasoning-gym"})
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


# Completions in SmolLM2-135M-Instruct's style: free text, an answer somewhere or nowhere.
SMOLLM_STYLE = [
    ("To find the GCD of 12 and 18, we list their factors. The greatest common divisor is 6.\nAnswer: 6", "6"),
    ("Let's add them up: 17 + 25 = 42. So, the total is 42 apples in the basket.", "42"),
    ("First, 3 * 4 = 12.\nThen we subtract 2 from it.\nThat leaves us with 10", "10"),
    ("I'm sorry, but I can't determine that without more information about the problem.", None),
    ("Sure! Here is the word spelled backward: <answer>nus</answer>", "nus"),
    ("nus", "nus"),
    ("The answer is: 1,000 pages", "1,000 pages"),
]


@pytest.mark.parametrize("completion, answer", SMOLLM_STYLE)
def test_free_text_answers_and_the_documented_fallback(completion, answer):
    assert extract_answer(completion) == answer


def test_free_text_without_an_answer_scores_zero_and_is_counted_as_no_answer():
    from evaluation.sampling import _score

    p = Problem("g2", "math", "q", "42", {"verifier": "numeric"})
    assert _score(score, p, SMOLLM_STYLE[1][0]) == ("42", 1.0)
    assert _score(score, p, SMOLLM_STYLE[3][0]) == (None, 0.0)  # extracted None: eval_samples.no_answer


def test_numeric_gsm8k_match():
    p = Problem("g1", "math", "q", "1234", {"verifier": "numeric"})
    assert score(p, "#### 1,234")[1] == 1.0
    assert score(p, "The answer is: 1234.0")[1] == 1.0
    assert score(p, "#### 1235")[1] == 0.0
    assert score(p, "no number")[1] == 0.0


def test_numeric_reads_scientific_notation():
    # reasoning-gym's number_format lists candidates as 5.930480000000000e+02: copying one is a right answer.
    p = Problem("n1", "compare", "q", "593.048", {"verifier": "numeric"})
    assert score(p, "Answer: 5.930480000000000e+02")[1] == 1.0
    assert score(p, "The largest is 5.93048E2.")[1] == 1.0
    assert score(p, "Answer: 5.85656e+02")[1] == 0.0
    assert score(Problem("n2", "compare", "q", "0.000012", {"verifier": "numeric"}), "Answer: 1.2e-5")[1] == 1.0


def test_math_verify_equivalence():
    p = Problem("m1", "math", "q", "\\frac{1}{2}", {"verifier": "math"})
    assert score(p, "\\boxed{0.5}")[1] == 1.0
    assert score(p, "\\boxed{\\frac{2}{4}}")[1] == 1.0
    assert score(p, "\\boxed{3}")[1] == 0.0


def test_unknown_verifier_is_a_config_error():
    with pytest.raises(ConfigError, match="data.verifier"):
        get_verifier("nope")


def _problem(answer: str, verifier: str = "marker", **meta) -> Problem:
    return Problem("p", "d", "q", answer, {"verifier": verifier, **meta})


def test_marker_verifier_reads_only_the_final_answer():
    p = _problem("12")
    assert score(p, "84%60=24, 60%24=12, 24%12=0. Answer: 12") == ("12", 1.0)
    # the steps are not checked: a wrong chain with the right answer scores, a right chain with a wrong answer does not
    assert score(p, "1+1=3. Answer: 12")[1] == 1.0
    assert score(p, "84%60=24, 60%24=12, 24%12=0. Answer: 24")[1] == 0.0
    # the last marker counts; whitespace around the answer is ignored
    assert score(p, "Answer: 3, then Answer:   12  ")[1] == 1.0


def test_marker_verifier_scores_malformed_traces_zero():
    p = _problem("12")
    for completion in ["84%60=24, 60%24=12", "12", "answer: 12", "Answer:", "Answer:   \n12", ""]:
        extracted, value = score(p, completion)
        assert value == 0.0, completion
    assert score(p, "no marker")[0] is None
    # no partial credit: a superstring of the answer is wrong
    assert score(p, "Answer: 112")[1] == 0.0
    assert score(p, "Answer: 12 12")[1] == 0.0


def test_partial_credit_only_when_asked_for():
    meta = {"reasoning_gym_task": "gcd", "numbers": [4, 6], "result": 2}
    marker = _problem("2", **meta)
    partial = _problem("2", verifier="reasoning-gym", **meta)
    assert score(marker, "Answer: 12")[1] == 0.0
    assert 0.0 < score(partial, "Answer: 12")[1] < 1.0
    assert score(partial, "Answer: 2")[1] == 1.0


def test_embedded_problems_default_to_the_marker_verifier():
    from curation.data import DataConfig, load_problems

    problems = load_problems(DataConfig(train_per_domain=5, test_per_domain=2))
    assert {p.metadata["verifier"] for p in problems.train + problems.test} == {"marker"}
    for p in problems.train:
        assert score(p, p.solution)[1] == 1.0
        assert score(p, p.answer)[1] == 0.0  # a bare answer without the marker is malformed


@pytest.mark.parametrize("name", ["exact", "marker", "numeric", "math"])
def test_an_empty_extracted_answer_never_scores(name):
    # a reference that normalizes to nothing must not turn an empty answer into a match
    for reference in ("", "  "):
        p = Problem("e", "d", "q", reference, {"verifier": name})
        for completion in ("Answer: ", "The answer is \\boxed{}", "#### ", ""):
            assert get_verifier(name).score(p, completion) == 0.0, (reference, completion)
