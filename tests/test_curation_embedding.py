import hashlib
import os

import numpy as np
import pytest

import curation.embedding as embedding
from curation.embedding import (
    EmbeddingCache,
    SentenceTransformerEncoder,
    default_model_path,
    embed_texts,
    model_fingerprint,
    text_keys,
)
from polymath.errors import ModelError

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class CountingEncoder:
    """Deterministic pseudo-embeddings from a text hash; records every text it embeds."""

    def __init__(self, name="fake", dim=8, nan_for=()):
        self.name = name
        self.dim = dim
        self.calls = 0
        self.texts: list[str] = []
        self.nan_for = set(nan_for)

    def encode(self, texts, batch_size):
        self.calls += 1
        self.texts.extend(texts)
        rows = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(self.dim) * 3.0  # not unit: embed_texts normalizes
            rows.append(np.full(self.dim, np.nan) if t in self.nan_for else v)
        return np.asarray(rows)


def test_second_call_embeds_nothing(tmp_path):
    enc = CountingEncoder()
    texts = ["a", "b", "c", "d"]
    first, stats = embed_texts(texts, enc, tmp_path)
    assert (stats.cache_hits, stats.cache_misses, enc.calls) == (0, 4, 1)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-6)

    fresh = CountingEncoder()  # a new process: only the disk cache is shared
    second, stats = embed_texts(texts[::-1], fresh, tmp_path)
    assert (stats.cache_hits, stats.cache_misses, fresh.calls) == (4, 0, 0)
    np.testing.assert_array_equal(second, first[::-1])


def test_only_new_texts_are_embedded_and_repeats_once(tmp_path):
    embed_texts(["a", "b"], CountingEncoder(), tmp_path)
    enc = CountingEncoder()
    X, stats = embed_texts(["b", "c", "a", "c", "e"], enc, tmp_path)
    assert sorted(enc.texts) == ["c", "e"]
    assert (stats.cache_hits, stats.cache_misses) == (2, 3)
    np.testing.assert_array_equal(X[1], X[3])
    reference, _ = embed_texts(["b", "c", "a", "c", "e"], CountingEncoder(), None)
    np.testing.assert_allclose(X, reference, rtol=1e-6)


def test_caches_are_per_model(tmp_path):
    embed_texts(["a"], CountingEncoder(name="m1"), tmp_path)
    other = CountingEncoder(name="m2")
    _, stats = embed_texts(["a"], other, tmp_path)
    assert stats.cache_misses == 1 and other.calls == 1


def test_nan_vectors_are_returned_but_never_cached(tmp_path):
    X, _ = embed_texts(["ok", "bad"], CountingEncoder(nan_for={"bad"}), tmp_path)
    assert np.isnan(X[1]).all() and np.isfinite(X[0]).all()
    enc = CountingEncoder()
    _, stats = embed_texts(["ok", "bad"], enc, tmp_path)
    assert enc.texts == ["bad"] and stats.cache_hits == 1


def test_chunks_are_persisted_and_shards_compacted(tmp_path, monkeypatch):
    monkeypatch.setattr(embedding, "_CHUNK", 3)
    monkeypatch.setattr(embedding, "_SHARD_LIMIT", 4)
    texts = [f"text {i}" for i in range(20)]
    enc = CountingEncoder()
    X, _ = embed_texts(texts, enc, tmp_path)
    assert enc.calls == 7  # ceil(20 / 3)
    cache = EmbeddingCache(tmp_path, "fake")
    assert len(list(cache.root.glob("part-*.npz"))) <= 4
    assert len(cache) == 20
    found, vectors = cache.lookup(text_keys(texts))
    assert found.all()
    np.testing.assert_array_equal(vectors, X)
    assert not list(cache.root.glob(".tmp-*"))


def test_fingerprint_follows_file_contents(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "weights.bin").write_bytes(b"\0" * (9 << 20))  # above the full-hash size: sampled
    before = model_fingerprint(tmp_path)
    assert model_fingerprint(tmp_path) == before
    # a retrained model: same file sizes, every block different
    (tmp_path / "weights.bin").write_bytes(b"\1" * (9 << 20))
    retrained = model_fingerprint(tmp_path)
    assert retrained != before
    (tmp_path / "config.json").write_text('{"hidden": 2}')
    assert model_fingerprint(tmp_path) not in (before, retrained)


def test_missing_or_broken_model_folder_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="does not exist.*embedding_model"):
        SentenceTransformerEncoder(tmp_path / "nope")
    with pytest.raises(ModelError, match="no modules.json"):
        SentenceTransformerEncoder(tmp_path)


def test_packaged_minilm_embeds_and_is_not_loaded_on_a_cached_rerun(tmp_path):
    enc = SentenceTransformerEncoder(default_model_path(), device="cpu")
    texts = ["What is 2 + 3?", "Spell 'cat' backwards.", "What is 2 + 3 ?"]
    X, stats = embed_texts(texts, enc, tmp_path, batch_size=2)
    assert X.shape == (3, 384) and stats.cache_misses == 3
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, rtol=1e-5)
    assert X[0] @ X[2] > X[0] @ X[1]  # near-identical prompts embed close together
    rerun = SentenceTransformerEncoder(default_model_path(), device="cpu")
    _, stats = embed_texts(texts, rerun, tmp_path)
    assert stats.cache_hits == 3 and rerun.model is None
