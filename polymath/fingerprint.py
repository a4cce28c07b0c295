"""Content fingerprints of the files and folders a stage reads, for its key.

A key that names an input by its path reuses a stale run when the file changes in place (a line appended to a
JSONL, new weights under ``model.path``). So a stage keys on the content: the SHA-256 of every file (a folder:
of its files by relative path). Hashing gigabytes of weights on every plan would cost seconds, so each file's
digest is cached by (size, mtime) in the workspace: an unchanged file costs a ``stat``, a touched or
rewritten one is hashed again (and a touched file whose bytes did not change keeps its key).
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

from .workspace import write_atomic

_CHUNK = 1 << 20
_lock = threading.Lock()


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class Fingerprints:
    """Digests of input files and folders, cached by (size, mtime) in ``cache_file``."""

    def __init__(self, cache_file: Path):
        self.cache_file = Path(cache_file)
        self._cache: dict[str, list] | None = None

    def _load(self) -> dict[str, list]:
        if self._cache is None:
            try:
                self._cache = json.loads(self.cache_file.read_text())
            except (OSError, ValueError):
                self._cache = {}  # missing or cut off: digests are recomputed, nothing else is lost
        return self._cache

    def _file(self, path: Path) -> tuple[str, bool]:
        stat = path.stat()
        cache = self._load()
        entry = cache.get(str(path))
        if entry and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns:
            return entry[2], False
        digest = _file_digest(path)
        cache[str(path)] = [stat.st_size, stat.st_mtime_ns, digest]
        return digest, True

    def of(self, path: str | Path) -> str:
        """The content digest of a file, or of a folder's files by relative path (16 hex characters)."""
        path = Path(path).resolve()
        with _lock:
            if path.is_dir():
                files = sorted(p for p in path.rglob("*") if p.is_file())
                h, changed = hashlib.sha256(), False
                for f in files:
                    digest, new = self._file(f)
                    changed |= new
                    h.update(f"{f.relative_to(path).as_posix()}\0{digest}\n".encode())
                result = h.hexdigest()
            else:
                result, changed = self._file(path)
            if changed:
                self.cache_file.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(self.cache_file, json.dumps(self._load()))
        return result[:16]
