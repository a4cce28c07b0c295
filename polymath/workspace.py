"""Content-addressed stage folders.

``workspace/artifacts/<stage>/<key>/`` holds one stage run: its outputs and a
``manifest.json`` (inputs, config, versions, timings, metrics summary). The key
hashes the upstream keys, the stage config and the code version, so a changed
config reruns that stage and what depends on it, nothing upstream.

A stage writes into an in-progress sibling folder, ``.partial-<key>``, and renames it into place only
when it finished: a crash never leaves a folder that looks complete. The in-progress folder is the same
for every attempt at one key, so a stage that checkpoints (training) resumes from what a killed attempt
wrote; an OS lock on a file beside it (``.partial-<key>.lock``) keeps two processes from writing one key
at once: a second one waits, then reuses the run if the first finished it. The kernel releases the lock
with its holder, so a killed writer leaves nothing to clean up. Files and folders are synced before the
final rename. A stage that checkpoints (``resume``) keeps its in-progress folder whatever stops it; any
other stage discards it on an error and keeps it when interrupted or killed.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import socket
import threading
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
#: The folders a train or merge run writes its peft adapter to, and a full fine-tune its whole model to.
ADAPTER, FULL_MODEL = "adapter", "model"
log = logging.getLogger("polymath")
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


#: The pseudo-package under which a run records the CPU kernels torch dispatched to (AVX2, AVX512, ...): float
#: results, and so a chaotic run such as the tiny model's warm start, differ between kernel sets.
CPU_KERNELS = "torch CPU kernels"
#: ... and the MKL code path of its matrix products (polymath/cpu_kernels.py).
MKL_PATH = "MKL code path"


def package_versions() -> dict[str, str]:
    out = {}
    for name in _TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        import torch

        out[CPU_KERNELS] = torch.backends.cpu.get_cpu_capability()
    except (ImportError, AttributeError):
        pass
    else:
        from polymath.cpu_kernels import mkl_code_path

        out[MKL_PATH] = mkl_code_path()
    return out


class FinishedMeanwhile(Exception):
    """Another process finished this stage key while this one waited for its lock: reuse that run."""

    def __init__(self, stage: str, key: str):
        super().__init__(f"{stage} {key} was finished by another process")
        self.stage, self.key = stage, key


class _KeyLock:
    """An exclusive OS lock (``flock``) on one stage key's lock file, which is never removed.

    The kernel drops the lock with its holder, so a crashed, killed or restarted writer (pid 1 in a new
    container included) leaves nothing to take over, and two waiters can never both hold it. Another
    process's lock is waited for; the holder's pid and host are written into the file only to say who
    is being waited for. One thread asking twice for a key it holds is a bug, refused at once.
    """

    _held: set[tuple[str, int]] = set()

    def __init__(self, path: Path, what: str):
        self.path, self.what = path, what
        self.fd: int | None = None
        self.slot = (str(path.resolve()), threading.get_ident())

    def acquire(self) -> None:
        if self.slot in _KeyLock._held:
            raise StageError(f"{self.what} is already being written by this thread ({self.path})")
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                log.info("%s is being written by %s: waiting for it", self.what, holder)
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        _KeyLock._held.add(self.slot)

    def release(self) -> None:
        if self.fd is not None:
            _KeyLock._held.discard(self.slot)
            os.close(self.fd)  # closing the only descriptor drops the flock
            self.fd = None


def _fsync_tree(folder: Path) -> None:
    """Every file under ``folder``, then every folder, on disk: a rename after it never exposes lost writes."""
    for path in sorted(folder.rglob("*"), key=lambda p: -len(p.parts)) + [folder]:
        flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
        fd = os.open(path, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree_root(folder: Path) -> None:
    """The folder's own entry list on disk (a rename inside it is durable once this returns)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """``text`` into ``path`` through a synced temporary sibling and a rename: old or new, never half."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


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
        """The run's manifest; None when there is none, or when it cannot be read (an unfinished run, rerun)."""
        path = self.stage_dir(stage, key) / MANIFEST
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, OSError) as exc:
            log.warning("%s: unreadable manifest (%s): the run counts as unfinished and runs again", path, exc)
            return None

    def partial_dir(self, stage: str, key: str) -> Path:
        """Where a run of ``key`` is being written (and where an interrupted attempt's checkpoints stay)."""
        return self.stage_dir(stage, key).parent / f".partial-{key}"

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
        asked = time.time()
        lock.acquire()
        try:
            done = final / MANIFEST
            if self.is_finished(stage, key) and done.stat().st_mtime >= asked:
                raise FinishedMeanwhile(stage, key)  # written while this process waited for the lock
            yield from self._write(stage, key, config, inputs, final, resume)
        finally:
            lock.release()

    def _write(self, stage: str, key: str, config: Any, inputs: dict[str, str], final: Path, resume: bool
               ) -> Iterator[StageRun]:
        _remove_dead_leftovers(final.parent)
        tmp = self.partial_dir(stage, key)
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
            _fsync_tree(tmp)
            if final.exists():
                # --force: move the old run aside first so the swap is two renames, never a half state.
                trash = final.parent / f".old-{key}-{uuid.uuid4().hex[:8]}"
                final.rename(trash)
                tmp.rename(final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                tmp.rename(final)
            _fsync_tree_root(final.parent)
        except Exception:
            # A stage that checkpoints keeps what it wrote (out of memory, a failed rank, a full disk): the next
            # attempt resumes; `polymath status` shows the partial run. Any other stage starts clean next time.
            if not resume:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        # KeyboardInterrupt, SystemExit: the in-progress folder stays for the next attempt to resume.
