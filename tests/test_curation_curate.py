import hashlib

import numpy as np
import pydantic
import pytest

from curation.config import CurateConfig
from curation.curate import curate
from curation.diversity import METRIC_NAMES
from curation.projection import plot_projection
from polymath.records import Problem
from polymath.errors import DataError, SelectionError

DOMAINS = ("arith", "legs", "words")


class TableEncoder:
    """Pseudo-embeddings: a text's vector comes from its hash, or from a base text's vector plus a
    tiny offset for texts registered as near twins; counts calls."""

    name = "table"

    def __init__(self, twins=None, nan_for=()):
        self.twins = twins or {}
        self.nan_for = set(nan_for)
        self.calls = 0

    @staticmethod
    def _vector(text):
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        return np.random.default_rng(seed).standard_normal(16)

    def encode(self, texts, batch_size):
        self.calls += 1
        rows = []
        for t in texts:
            if t in self.nan_for:
                rows.append(np.full(16, np.nan))
            elif t in self.twins:
                rows.append(self._vector(self.twins[t]) + 1e-3)
            else:
                rows.append(self._vector(t))
        return np.asarray(rows)


def make_problems(n=60):
    return [Problem(id=f"p{i}", domain=DOMAINS[i % 3], prompt=f"Question number {i}?", answer=str(i)) for i in range(n)]


@pytest.fixture
def problems_with_duplicates():
    problems = make_problems()
    exact = [Problem(id=f"x{i}", domain="arith", prompt=f"  QUESTION number {i}? ", answer="") for i in range(4)]
    near = [Problem(id=f"n{i}", domain="legs", prompt=f"Question number {i} ?!", answer="") for i in range(10, 13)]
    twins = {p.prompt: f"Question number {i}?" for p, i in zip(near, range(10, 13))}
    return problems + exact + near, TableEncoder(twins)


def test_curate_end_to_end(tmp_path, problems_with_duplicates):
    problems, encoder = problems_with_duplicates
    config = CurateConfig(strategy="kcenter", k=12, n_clusters=5)
    result = curate(problems, config, tmp_path, encoder=encoder)

    assert (result.dedup.n_input, result.dedup.exact_duplicates, result.dedup.near_duplicates) == (67, 4, 3)
    assert result.dedup.n_kept == 60 and len(result.kept_ids) == 60 == len(result.embeddings)
    assert result.embed.cache_misses == 63 and result.embed.cache_hits == 0
    assert result.k == 12 and len(set(result.selected_ids)) == 12
    assert set(result.selected_ids) <= set(result.kept_ids)
    assert all(not pid.startswith(("x", "n")) for pid in result.kept_ids)

    table = result.selection
    assert list(table.columns) == ["problem_id", "domain", "cluster", "rank"]
    assert table.problem_id.tolist() == result.selected_ids and table["rank"].tolist() == list(range(12))
    assert table.cluster.between(0, 4).all()
    by_id = {p.id: p.domain for p in problems}
    assert all(by_id[pid] == dom for pid, dom in zip(table.problem_id, table.domain))
    assert [result.kept_ids[i] for i in result.selected_index] == result.selected_ids

    m = result.metrics
    assert list(m.columns) == ["strategy", "seed", "metric", "value"]
    runs = sorted(set(zip(m.strategy, m.seed)))
    assert runs == [("kcenter", 0), ("random", 0), ("random", 1), ("random", 2)]
    expected = set(METRIC_NAMES) | {f"domain:{d}" for d in DOMAINS}
    for run in runs:
        block = m[(m.strategy == run[0]) & (m.seed == run[1])]
        assert set(block.metric) == expected
        counts = block.set_index("metric").value
        assert sum(counts[f"domain:{d}"] for d in DOMAINS) == 12
    # farthest-first covers the worst-covered point better than random picks do
    max_cov = m[m.metric == "max_coverage"].groupby("strategy").value.mean()
    assert max_cov["kcenter"] < max_cov["random"]
    assert min(result.dedup_seconds, result.selection_seconds, result.metrics_seconds) >= 0


def test_curate_is_deterministic_and_reruns_from_the_cache(tmp_path):
    problems = make_problems()
    config = CurateConfig(strategy="kmeans-centroid", k=8, n_clusters=4, seed=3)
    first = curate(problems, config, tmp_path, encoder=TableEncoder())
    rerun_encoder = TableEncoder()
    second = curate(problems, config, tmp_path, encoder=rerun_encoder)
    assert rerun_encoder.calls == 0 and second.embed.cache_hits == 60
    assert first.selected_ids == second.selected_ids
    assert first.metrics.equals(second.metrics)


def test_random_strategy_does_not_repeat_its_own_seed(tmp_path):
    config = CurateConfig(strategy="random", k=5, seed=1, random_seeds=[0, 1, 2], n_clusters=3)
    m = curate(make_problems(30), config, None, encoder=TableEncoder()).metrics
    assert sorted(set(zip(m.strategy, m.seed))) == [("random", 0), ("random", 1), ("random", 2)]


def test_full_keeps_every_distinct_problem(tmp_path):
    result = curate(make_problems(20), CurateConfig(strategy="full", k=600, n_clusters=3), None, encoder=TableEncoder())
    assert result.k == 20 and result.selected_ids == [f"p{i}" for i in range(20)]


def test_small_input_errors_or_clips(tmp_path):
    problems = make_problems(10)
    with pytest.raises(SelectionError, match=r"k=50 exceeds the n=10 .*on_small_input: clip"):
        curate(problems, CurateConfig(k=50), None, encoder=TableEncoder())
    with pytest.warns(UserWarning, match="selecting all 10"):
        result = curate(problems, CurateConfig(k=50, on_small_input="clip", n_clusters=3), None, encoder=TableEncoder())
    assert result.k == 10 and sorted(result.selected_ids) == sorted(p.id for p in problems)


def test_all_duplicates_is_a_clear_error():
    problems = [Problem(id=f"d{i}", domain="arith", prompt="What is 1 + 1?" + " " * i, answer="2") for i in range(5)]
    with pytest.raises(SelectionError, match="all 5 problems are duplicates of one another"):
        curate(problems, CurateConfig(k=3), None, encoder=TableEncoder())
    with pytest.warns(UserWarning):
        result = curate(problems, CurateConfig(k=3, on_small_input="clip"), None, encoder=TableEncoder())
    assert result.selected_ids == ["d0"]


def test_bad_inputs():
    with pytest.raises(SelectionError, match="empty"):
        curate([], CurateConfig(), None, encoder=TableEncoder())
    problems = make_problems(10)
    with pytest.raises(SelectionError, match="NaN.*p4"):
        curate(problems, CurateConfig(k=3), None, encoder=TableEncoder(nan_for={"Question number 4?"}))
    with pytest.raises(DataError, match="'p1'.*unique"):
        curate(problems + [problems[1]], CurateConfig(k=3), None, encoder=TableEncoder())


def test_config_validation():
    with pytest.raises(pydantic.ValidationError, match="random_seeds"):
        CurateConfig(random_seeds=[0, 1])
    with pytest.raises(pydantic.ValidationError, match="repeats a seed"):
        CurateConfig(random_seeds=[0, 1, 1])
    with pytest.raises(pydantic.ValidationError, match="extra"):
        CurateConfig(kk=3)
    with pytest.raises(pydantic.ValidationError, match="strategy"):
        CurateConfig(strategy="kmeans")
    assert CurateConfig().k == 600 and CurateConfig().dedup_threshold == 0.95


def test_projection_png(tmp_path):
    config = CurateConfig(strategy="kcenter", k=6, n_clusters=3)
    result = curate(make_problems(40), config, None, encoder=TableEncoder())
    out = plot_projection(result.embeddings, result.selected_index, tmp_path / "plots" / "projection.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    assert not list(out.parent.glob(".tmp-*"))
    sampled = plot_projection(result.embeddings, result.selected_index, tmp_path / "s.png", max_background=10)
    assert sampled.exists()
    with pytest.raises(SelectionError, match="selected_idx"):
        plot_projection(result.embeddings, np.array([0, 40]), tmp_path / "bad.png")
