import json
from pathlib import Path

import pandas as pd
import pytest

from curation.data import DataConfig, load_problems, normalize_prompt, parse_answer
from curation.domains import EMBEDDED_DOMAINS, load_embedded
from polymath.errors import DataError


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GSM = [
    {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3 + 4 = 7\n#### 7"},
    {"question": "A box holds 12 eggs. How many in 3 boxes?", "answer": "12 * 3 = 36\n#### 36"},
    {"question": "Sara reads 1,000 pages over 4 days. Pages per day?", "answer": "#### 250"},
    {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "#### 7"},
]


def test_gsm8k_jsonl_loads_through_config_alone(tmp_path):
    path = _jsonl(tmp_path / "gsm.jsonl", GSM)
    cfg = DataConfig(format="jsonl", path=str(path), fields={"prompt": "question"}, answer_format="gsm8k",
                     domain="math", test_fraction=0.0)
    ps = load_problems(cfg)
    assert [p.answer for p in ps.train] == ["7", "36", "250"]
    assert ps.duplicates_dropped == 1
    assert {p.domain for p in ps.train} == {"math"}
    assert all(p.metadata["verifier"] == "numeric" for p in ps.train)


def test_malformed_line_names_file_and_line(tmp_path):
    path = _jsonl(tmp_path / "bad.jsonl", [GSM[0], "{not json", GSM[1]])
    cfg = DataConfig(format="jsonl", path=str(path), fields={"prompt": "question"}, answer_format="gsm8k")
    with pytest.raises(DataError, match=r"bad\.jsonl line 2: not valid JSON"):
        load_problems(cfg)


@pytest.mark.parametrize("row, message", [
    ({"question": "q?", "answer": None, "topic": "t"}, r"line 2: empty or null answer in field 'answer'"),
    ({"question": "q?", "answer": "  ", "topic": "t"}, r"line 2: empty or null answer in field 'answer'"),
    ({"question": "q?", "answer": "3", "topic": None}, r"line 2: empty or null domain in field 'topic'"),
    ({"question": "q?", "answer": "3", "topic": ""}, r"line 2: empty or null domain in field 'topic'"),
])
def test_null_or_empty_answers_and_domains_name_their_line(tmp_path, row, message):
    path = _jsonl(tmp_path / "rows.jsonl", [{"question": "p?", "answer": "1", "topic": "t"}, row])
    cfg = DataConfig(format="jsonl", path=str(path), fields={"prompt": "question", "domain": "topic"})
    with pytest.raises(DataError, match=message):
        load_problems(cfg)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_file_that_is_not_utf8_names_its_line(tmp_path, fmt):
    path = tmp_path / f"latin.{fmt}"
    good, bad = ('{"prompt": "a", "answer": "1"}\n', '{"prompt": "caf\xe9", "answer": "2"}\n') if fmt == "jsonl" \
        else ("prompt,answer\n", "caf\xe9,2\n")
    path.write_bytes(good.encode() + bad.encode("latin-1"))
    column = bad.index("\xe9") + 1
    with pytest.raises(DataError, match=rf"latin\.{fmt} line 2: not UTF-8 \(byte 0xe9 at column {column}\)"):
        load_problems(DataConfig(format=fmt, path=str(path)))


def test_missing_field_lists_present_fields(tmp_path):
    path = _jsonl(tmp_path / "gsm.jsonl", GSM)
    cfg = DataConfig(format="jsonl", path=str(path))
    with pytest.raises(DataError, match=r"line 1: field 'prompt' \(data.fields.prompt\) is missing; fields present: question, answer"):
        load_problems(cfg)


def test_missing_gsm8k_marker_names_the_line(tmp_path):
    path = _jsonl(tmp_path / "g.jsonl", [GSM[0], {"question": "q", "answer": "no marker"}])
    cfg = DataConfig(format="jsonl", path=str(path), fields={"prompt": "question"}, answer_format="gsm8k")
    with pytest.raises(DataError, match=r"g\.jsonl line 2: answer has no '#### <number>'"):
        load_problems(cfg)


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(DataError, match="no training problems"):
        load_problems(DataConfig(format="jsonl", path=str(path)))


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_problems(DataConfig(format="jsonl", path=str(tmp_path / "nope.jsonl")))


def test_csv_and_parquet_with_field_mapping(tmp_path):
    frame = pd.DataFrame({"q": ["1+1?", "2+2?", "3+3?"], "sol": ["\\boxed{2}", "\\boxed{4}", "\\boxed{6}"],
                          "topic": ["a", "a", "b"], "uid": ["x1", "x2", "x3"]})
    frame.to_csv(tmp_path / "p.csv", index=False)
    frame.to_parquet(tmp_path / "p.parquet")
    fields = {"prompt": "q", "answer": "sol", "domain": "topic", "id": "uid"}
    for fmt, name in (("csv", "p.csv"), ("parquet", "p.parquet")):
        ps = load_problems(DataConfig(format=fmt, path=str(tmp_path / name), fields=fields, answer_format="boxed",
                                      test_fraction=0.0))
        assert [(p.id, p.domain, p.answer) for p in ps.train] == [("x1", "a", "2"), ("x2", "a", "4"), ("x3", "b", "6")]
        assert ps.train[0].metadata["verifier"] == "math"
    bad = DataConfig(format="csv", path=str(tmp_path / "p.csv"), fields={"prompt": "question"})
    with pytest.raises(DataError, match=r"p\.csv line 2: field 'question'"):
        load_problems(bad)


def test_hf_dataset_from_disk(tmp_path):
    import datasets

    datasets.Dataset.from_list(GSM[:3]).save_to_disk(str(tmp_path / "ds"))
    cfg = DataConfig(format="hf", path=str(tmp_path / "ds"), fields={"prompt": "question"}, answer_format="gsm8k",
                     test_fraction=0.0)
    assert [p.answer for p in load_problems(cfg).train] == ["7", "36", "250"]


def test_prefix_and_suffix_stripping():
    prefix = "Solve the following math problem step by step. "
    assert normalize_prompt(prefix + "What is 2+2?  Remember to box it.", [prefix], [" Remember to box it."]) == "What is 2+2?"
    assert normalize_prompt("untouched", [prefix], []) == "untouched"


def test_answer_formats():
    assert parse_answer("x\n#### 1,234", "gsm8k", "w") == "1234"
    assert parse_answer("so \\boxed{\\frac{1}{2}}", "boxed", "w") == "\\frac{1}{2}"
    assert parse_answer(" 42 ", "plain", "w") == "42"


def test_holdout_split_is_disjoint_and_stable(tmp_path):
    rows = [{"question": f"What is {i} plus {i}?", "answer": f"#### {2 * i}"} for i in range(200)]
    path = _jsonl(tmp_path / "many.jsonl", rows)
    cfg = DataConfig(format="jsonl", path=str(path), fields={"prompt": "question"}, answer_format="gsm8k",
                     test_fraction=0.2)
    a, b = load_problems(cfg), load_problems(cfg)
    assert [p.id for p in a.test] == [p.id for p in b.test]
    assert not {p.id for p in a.train} & {p.id for p in a.test}
    assert 20 <= len(a.test) <= 60


def test_embedded_set_is_seeded_and_disjoint():
    train, test = load_embedded(train_per_domain=50, test_per_domain=10)
    train2, _ = load_embedded(train_per_domain=50, test_per_domain=10)
    assert [p.prompt for p in train] == [p.prompt for p in train2]
    assert len(train) == 50 * len(EMBEDDED_DOMAINS) and len(test) == 10 * len(EMBEDDED_DOMAINS)
    assert not {p.prompt for p in train} & {p.prompt for p in test}
    assert {p.domain for p in train} == {d.domain for d in EMBEDDED_DOMAINS}


SUMS = {"domain": "sums", "task": "chain_sum", "params": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}}
PRODUCTS = {"domain": "products", "task": "products", "params": {"min_terms": 2, "max_terms": 2, "max_digits": 1}}


def test_reasoning_gym_tasks_by_config_become_domains_with_their_difficulty():
    cfg = DataConfig(tasks=[SUMS, PRODUCTS], train_per_domain=30, test_per_domain=8, verifier="numeric")
    assert cfg.static_domains() == ["products", "sums"]
    ps = load_problems(cfg)
    assert ps.domains() == ["products", "sums"] and len(ps.train) == 60 and len(ps.test) == 16
    assert not {p.prompt for p in ps.train} & {p.prompt for p in ps.test}
    sums = [p for p in ps.train if p.domain == "sums"]
    assert all(p.metadata["num_terms"] == 2 and p.metadata["reasoning_gym_task"] == "chain_sum" for p in sums)
    assert all(p.solution for p in sums)  # chain_sum has a trace format; products has none
    assert not any(p.solution for p in ps.train if p.domain == "products")
    only = load_problems(DataConfig(tasks=[SUMS, PRODUCTS], domains=["sums"], train_per_domain=30, test_per_domain=8))
    assert [p.prompt for p in only.train] == [p.prompt for p in sums]


@pytest.mark.parametrize("data, message", [
    ({"tasks": [{**SUMS, "task": "chainsum"}]}, r"unknown reasoning-gym task 'chainsum' for domain 'sums'; did you mean chain_sum"),
    ({"tasks": [SUMS, {**PRODUCTS, "domain": "sums"}]}, r"two tasks give domain 'sums'"),
    ({"tasks": [SUMS], "domains": ["gcd"]}, r"domains names 'gcd', which is not one of this source's reasoning-gym domains: sums"),
    ({"tasks": [SUMS], "format": "jsonl", "path": "x.jsonl"}, r"tasks are reasoning-gym tasks, but the format is 'jsonl'"),
])
def test_bad_task_configs_are_refused_with_the_fix(data, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(**data)


def test_a_task_that_rejects_its_parameters_or_runs_out_of_prompts_names_it():
    bad = {"domain": "g", "task": "gcd", "params": {"min_value": 50, "max_value": 3}}
    with pytest.raises(DataError, match=r"task 'gcd' \(domain 'g'\) rejects its parameters .*max_value"):
        load_problems(DataConfig(tasks=[bad]))
    tiny = {"domain": "t", "task": "products", "params": {"min_terms": 2, "max_terms": 2, "max_digits": 1}}
    with pytest.raises(DataError, match=r"fewer than 500 distinct prompts .*lower data.train_per_domain"):
        load_problems(DataConfig(tasks=[tiny], train_per_domain=500))


def test_demo_profile_has_about_17k_problems():
    from pipeline.config import load_config

    ps = load_problems(load_config("demo").data)
    total = len(ps.train) + len(ps.test)
    assert 16_000 <= total <= 18_000
    assert len(ps.domains()) >= 4
    assert not {p.prompt for p in ps.train} & {p.prompt for p in ps.test}


def test_dapo_style_nested_fields_and_instruction_stripping(tmp_path):
    prefix = "Solve the following math problem step by step. The last line of your response should be of the form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
    suffix = '\n\nRemember to put your answer on its own line after "Answer:".'
    rows = [
        {"prompt": [{"role": "user", "content": prefix + "Find x if 2x = 10." + suffix}],
         "reward_model": {"ground_truth": "5", "style": "rule"}, "data_source": "math_dapo"},
        {"prompt": [{"role": "user", "content": prefix + "What is 3^2?" + suffix}],
         "reward_model": {"ground_truth": "9", "style": "rule"}, "data_source": "math_dapo"},
    ]
    path = _jsonl(tmp_path / "dapo.jsonl", rows)
    cfg = DataConfig(format="jsonl", path=str(path), fields={"prompt": "prompt", "answer": "reward_model.ground_truth"},
                     strip_prefixes=[prefix], strip_suffixes=[suffix], verifier="math", domain="math", test_fraction=0.0)
    ps = load_problems(cfg)
    assert [(p.prompt, p.answer) for p in ps.train] == [("Find x if 2x = 10.", "5"), ("What is 3^2?", "9")]
    assert ps.train[0].metadata["data_source"] == "math_dapo"
    bad = cfg.model_copy(update={"fields": cfg.fields.model_copy(update={"answer": "reward_model.truth"})})
    with pytest.raises(DataError, match=r"field 'reward_model.truth'"):
        load_problems(bad)


def test_problems_without_a_worked_solution_round_trip_through_the_data_stage_files(tmp_path):
    from pipeline.data import read_problems, write_problems
    from polymath.records import Problem

    problems = [Problem(id="a", domain="sums", prompt="1 + 2 =", answer="3", solution="1+2=3. Answer: 3"),
                Problem(id="b", domain="products", prompt="2 * 3", answer="6")]
    write_problems(problems, tmp_path / "p.parquet")
    back = read_problems(tmp_path / "p.parquet")
    assert [p.solution for p in back] == ["1+2=3. Answer: 3", None]  # not NaN: the token cap reads solutions
