import json

import pytest

from polymath.workspace import Workspace, stage_key


def test_key_depends_on_config_inputs_and_code():
    base = stage_key("train", {"lr": 1}, {"data": "a"}, "code1")
    assert base == stage_key("train", {"lr": 1}, {"data": "a"}, "code1")
    assert base != stage_key("train", {"lr": 2}, {"data": "a"}, "code1")
    assert base != stage_key("train", {"lr": 1}, {"data": "b"}, "code1")
    assert base != stage_key("train", {"lr": 1}, {"data": "a"}, "code2")
    assert base != stage_key("curate", {"lr": 1}, {"data": "a"}, "code1")


def test_finished_run_has_manifest(tmp_path):
    ws = Workspace(tmp_path)
    with ws.stage_run("curate", "k1", {"k": 3}, {"data": "d"}) as run:
        (run.tmp / "out.txt").write_text("hello")
        run.summary["n"] = 3
    assert ws.is_finished("curate", "k1")
    m = json.loads((ws.stage_dir("curate", "k1") / "manifest.json").read_text())
    assert m["status"] == "finished" and m["summary"] == {"n": 3} and m["inputs"] == {"data": "d"}
    assert (ws.stage_dir("curate", "k1") / "out.txt").read_text() == "hello"


def test_crash_leaves_nothing_that_looks_finished(tmp_path):
    ws = Workspace(tmp_path)
    with pytest.raises(RuntimeError):
        with ws.stage_run("train", "k2", {}, {}) as run:
            (run.tmp / "partial.bin").write_bytes(b"x")
            raise RuntimeError("boom")
    assert not ws.is_finished("train", "k2")
    assert not ws.stage_dir("train", "k2").exists()
    assert [p.name for p in (tmp_path / "artifacts" / "train").iterdir()] == [".partial-k2.lock"]


def test_forced_rerun_replaces_the_folder(tmp_path):
    ws = Workspace(tmp_path)
    for content in ("first", "second"):
        with ws.stage_run("merge", "k3", {}, {}) as run:
            (run.tmp / "x.txt").write_text(content)
    assert (ws.stage_dir("merge", "k3") / "x.txt").read_text() == "second"
    assert sorted(p.name for p in (tmp_path / "artifacts" / "merge").iterdir()) == [".partial-k3.lock", "k3"]


def test_failed_rerun_keeps_the_old_run(tmp_path):
    ws = Workspace(tmp_path)
    with ws.stage_run("merge", "k4", {}, {}) as run:
        (run.tmp / "x.txt").write_text("good")
    with pytest.raises(ValueError):
        with ws.stage_run("merge", "k4", {}, {}) as run:
            raise ValueError("bad")
    assert (ws.stage_dir("merge", "k4") / "x.txt").read_text() == "good"


def test_polymath_home(monkeypatch, tmp_path):
    monkeypatch.setenv("POLYMATH_HOME", str(tmp_path / "home"))
    assert Workspace().root == tmp_path / "home"


def test_an_interrupted_run_keeps_its_folder_for_the_next_attempt_and_an_error_does_not(tmp_path):
    ws = Workspace(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with ws.stage_run("train", "k5", {}, {}, resume=True) as run:
            (run.tmp / "checkpoint.bin").write_bytes(b"step 3")
            raise KeyboardInterrupt
    folder = tmp_path / "artifacts" / "train"
    assert sorted(p.name for p in folder.iterdir()) == [".partial-k5", ".partial-k5.lock"]  # kept
    with ws.stage_run("train", "k5", {}, {}, resume=True) as run:
        assert (run.tmp / "checkpoint.bin").read_bytes() == b"step 3"
    assert sorted(p.name for p in folder.iterdir()) == [".partial-k5.lock", "k5"]
    # a stage that cannot resume starts clean
    with pytest.raises(KeyboardInterrupt):
        with ws.stage_run("merge", "k6", {}, {}) as run:
            (run.tmp / "half.bin").write_bytes(b"x")
            raise KeyboardInterrupt
    with ws.stage_run("merge", "k6", {}, {}) as run:
        assert list(run.tmp.iterdir()) == []


def test_an_error_keeps_a_resumable_runs_checkpoints_and_an_unreadable_manifest_is_unfinished(tmp_path):
    ws = Workspace(tmp_path)
    with pytest.raises(MemoryError):
        with ws.stage_run("train", "k9", {}, {}, resume=True) as run:
            (run.tmp / "checkpoint-2").mkdir()
            raise MemoryError("out of memory")
    assert (ws.partial_dir("train", "k9") / "checkpoint-2").is_dir()
    with ws.stage_run("merge", "k10", {}, {}) as run:
        pass
    (ws.stage_dir("merge", "k10") / "manifest.json").write_text("")  # cut off by a full disk
    assert ws.manifest("merge", "k10") is None and not ws.is_finished("merge", "k10")
    with ws.stage_run("merge", "k10", {}, {}) as run:
        (run.tmp / "x").write_text("again")
    assert ws.is_finished("merge", "k10")


def test_a_thread_asking_twice_for_its_own_key_is_refused_and_a_dead_writer_leaves_no_lock(tmp_path):
    import subprocess
    import sys

    from polymath.errors import StageError

    ws = Workspace(tmp_path)
    with ws.stage_run("train", "k7", {}, {}):
        with pytest.raises(StageError, match=r"already being written by this thread"):
            with ws.stage_run("train", "k7", {}, {}):
                pass
    # a writer killed while holding the lock: the kernel released it, the next run goes straight in
    script = ("import os, sys; from polymath.workspace import Workspace\n"
              f"with Workspace({str(tmp_path)!r}).stage_run('train', 'k8', {{}}, {{}}, resume=True):\n"
              "    os._exit(9)\n")
    assert subprocess.run([sys.executable, "-c", script]).returncode == 9
    with ws.stage_run("train", "k8", {}, {}, resume=True) as run:
        (run.tmp / "x").write_text("ok")
    assert ws.is_finished("train", "k8")


def _race(root: str, key: str, start: float, barrier_dir: str) -> str:
    """One of several processes running the same stage key at once (a stage's run() in miniature)."""
    import os
    import time as _time
    from pathlib import Path

    from pipeline.stage import reuse_when_finished_meanwhile

    ws = Workspace(root)

    @reuse_when_finished_meanwhile
    def run() -> str:
        if ws.is_finished("curate", key):
            return "reused"
        with ws.stage_run("curate", key, {}, {}) as out:
            (Path(barrier_dir) / f"writer-{os.getpid()}").touch()
            _time.sleep(0.5)
            (out.tmp / "who").write_text(str(os.getpid()))
        return "wrote"

    _time.sleep(max(0.0, start - _time.time()))
    return run()


def test_eight_processes_racing_on_one_key_give_one_writer_and_the_others_reuse_its_run(tmp_path):
    import time
    from concurrent.futures import ProcessPoolExecutor

    writers = tmp_path / "writers"
    writers.mkdir()
    start = time.time() + 2.0
    with ProcessPoolExecutor(8) as pool:
        results = list(pool.map(_race, [str(tmp_path / "ws")] * 8, ["race"] * 8, [start] * 8, [str(writers)] * 8))
    assert sorted(results) == ["reused"] * 7 + ["wrote"]
    assert len(list(writers.iterdir())) == 1
    ws = Workspace(tmp_path / "ws")
    assert ws.is_finished("curate", "race") and (ws.stage_dir("curate", "race") / "who").exists()
