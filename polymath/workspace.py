"""Content-addressed stage folders.

``workspace/artifacts/<stage>/<key>/`` holds one stage run: its outputs and a
``manifest.json`` (inputs, config, versions, timings, metrics summary). The key
hashes the upstream keys, the stage config and the code version, so a changed
config reruns that stage and what depends on it, nothing upstream.

A stage writes into an in-progress sibling folder, ``.partial-<key>``, and renames it into place only
when it finished: a crash never leaves a folder that looks complete. The in-progress folder is the same
for every attempt at one key, so a stage that checkpoints (training) resumes from what a killed attempt
wrote; a lock file beside it (``.partial-<key>.lock``, holding the writer's pid and host) keeps two
processes from writing one key at once, and a lock whose process is gone is taken over. A stage that
fails with an error discards its in-progress folder; one that is interrupted or killed keeps it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from . import __version__
from .errors import StageError

MANIFEST = "manifest.json"
_TRACKED_PACKAGES = ("torch", "transformers", "trl", "peft", "sentence-transformers", "scikit-learn", "duckdb")


def default_root() -> Path:
    return Path(os.environ.get("POLYMATH_HOME", "workspace"))


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


@functools.lru_cache(maxsize=None)
def source_digest(*paths: str) -> str:
    """Hash of the Python sources a stage runs (packages or single modules): code changes invalidate keys.

    Each stage names only the code that shapes its outputs, so editing the verifier does not
    re-bootstrap the base model. Cached per process: a run's plan, its reuse checks and its stages hash the
    same sources, which do not change while it runs.
    """
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256(__version__.encode())
    for rel in paths:
        target = root / rel
        files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
        for path in files:
            h.update(path.relative_to(root).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def stage_key(stage: str, config: Any, inputs: dict[str, str], code: str) -> str:
    payload = {"stage": stage, "config": config, "inputs": inputs, "code": code}
    return hashlib.sha256(_canonical(payload).encode()).hexdigest()[:16]


def package_versions() -> dict[str, str]:
    out = {}
    for name in _TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _KeyLock:
    """An exclusive lock file for one stage key: pid and host of the writer."""

    def __init__(self, path: Path, what: str):
        self.path, self.what = path, what
        self.token = f"{os.getpid()} {socket.gethostname()}"

    def _holder(self) -> tuple[int, str] | None:
        try:
            pid, host = self.path.read_text().split(" ", 1)
            return int(pid), host.strip()
        except (FileNotFoundError, ValueError):
            return None

    def acquire(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and (holder[1] != socket.gethostname() or _process_alive(holder[0])):
                    raise StageError(
                        f"{self.what} is being written by process {holder[0]} on {holder[1]}; wait for it to finish, "
                        f"or delete {self.path} if that process is gone"
                    ) from None
                self.path.unlink(missing_ok=True)  # its writer died: take the key over
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(self.token)
            return
        raise StageError(f"could not take the lock {self.path} for {self.what}; another run took it first")

    def release(self) -> None:
        if self._holder() is not None and self.path.read_text() == self.token:
            self.path.unlink(missing_ok=True)


def _remove_dead_leftovers(folder: Path) -> None:
    """Temporary folders no live run can own: ``.tmp-*`` (the older layout) and ``.old-*`` (a swap cut short)."""
    for path in folder.glob(".tmp-*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in folder.glob(".old-*"):
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class StageRun:
    """A stage run being written: outputs go into ``tmp``; ``summary`` lands in the manifest."""

    stage: str
    key: str
    tmp: Path
    final: Path
    summary: dict[str, Any]


class Workspace:
    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else default_root()

    @property
    def db_path(self) -> Path:
        return self.root / "polymath.duckdb"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    def stage_dir(self, stage: str, key: str) -> Path:
        return self.root / "artifacts" / stage / key

    def manifest(self, stage: str, key: str) -> dict[str, Any] | None:
        path = self.stage_dir(stage, key) / MANIFEST
        if not path.exists():
            return None
        with path.open() as fh:
            return json.load(fh)

    def is_finished(self, stage: str, key: str) -> bool:
        m = self.manifest(stage, key)
        return bool(m and m.get("status") == "finished")

    @contextmanager
    def stage_run(
        self, stage: str, key: str, config: Any, inputs: dict[str, str], resume: bool = False
    ) -> Iterator[StageRun]:
        """Write a stage run atomically into ``.partial-<key>`` (module docstring). ``resume``: keep what an
        interrupted attempt left there (a stage that checkpoints); otherwise start from an empty folder."""
        final = self.stage_dir(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        lock = _KeyLock(final.parent / f".partial-{key}.lock", f"stage run {stage} {key}")
        lock.acquire()
        try:
            yield from self._write(stage, key, config, inputs, final, resume)
        finally:
            lock.release()

    def _write(self, stage: str, key: str, config: Any, inputs: dict[str, str], final: Path, resume: bool
               ) -> Iterator[StageRun]:
        _remove_dead_leftovers(final.parent)
        tmp = final.parent / f".partial-{key}"
        if tmp.exists() and not resume:
            shutil.rmtree(tmp)
        tmp.mkdir(exist_ok=True)
        run = StageRun(stage=stage, key=key, tmp=tmp, final=final, summary={})
        started = datetime.now(timezone.utc)
        t0 = time.perf_counter()
        try:
            yield run
            manifest = {
                "stage": stage,
                "key": key,
                "status": "finished",
                "inputs": inputs,
                "config": config,
                "polymath_version": __version__,
                "packages": package_versions(),
                "started_at": started.isoformat(),
                "finished_at": datetime.now(timezone.utc).isoformat(),
                "seconds": round(time.perf_counter() - t0, 3),
                "summary": run.summary,
            }
            with (tmp / MANIFEST).open("w") as fh:
                json.dump(manifest, fh, indent=2, default=str)
            if final.exists():
                # --force: move the old run aside first so the swap is two renames, never a half state.
                trash = final.parent / f".old-{key}-{uuid.uuid4().hex[:8]}"
                final.rename(trash)
                tmp.rename(final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                tmp.rename(final)
        except Exception:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        # KeyboardInterrupt, SystemExit: the in-progress folder stays for the next attempt to resume.
