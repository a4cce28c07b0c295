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
    assert list((tmp_path / "artifacts" / "train").iterdir()) == []


def test_forced_rerun_replaces_the_folder(tmp_path):
    ws = Workspace(tmp_path)
    for content in ("first", "second"):
        with ws.stage_run("merge", "k3", {}, {}) as run:
            (run.tmp / "x.txt").write_text(content)
    assert (ws.stage_dir("merge", "k3") / "x.txt").read_text() == "second"
    assert sorted(p.name for p in (tmp_path / "artifacts" / "merge").iterdir()) == ["k3"]


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
    assert sorted(p.name for p in folder.iterdir()) == [".partial-k5"]  # kept, lock released
    with ws.stage_run("train", "k5", {}, {}, resume=True) as run:
        assert (run.tmp / "checkpoint.bin").read_bytes() == b"step 3"
    assert sorted(p.name for p in folder.iterdir()) == ["k5"]
    # a stage that cannot resume starts clean
    with pytest.raises(KeyboardInterrupt):
        with ws.stage_run("merge", "k6", {}, {}) as run:
            (run.tmp / "half.bin").write_bytes(b"x")
            raise KeyboardInterrupt
    with ws.stage_run("merge", "k6", {}, {}) as run:
        assert list(run.tmp.iterdir()) == []


def test_one_writer_per_key_and_a_dead_writers_lock_is_taken_over(tmp_path):
    import subprocess
    import sys

    from polymath.errors import StageError

    ws = Workspace(tmp_path)
    folder = tmp_path / "artifacts" / "train"
    with ws.stage_run("train", "k7", {}, {}):
        with pytest.raises(StageError, match=r"being written by process \d+ .*delete .*\.partial-k7\.lock"):
            with ws.stage_run("train", "k7", {}, {}):
                pass
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    (folder / ".partial-k8.lock").write_text(f"{int(dead.stdout)} {socket.gethostname()}")
    (folder / ".tmp-k8-deadbeef").mkdir()  # the older layout's leftovers go too
    with ws.stage_run("train", "k8", {}, {}) as run:
        (run.tmp / "x").write_text("ok")
    assert sorted(p.name for p in folder.iterdir()) == ["k7", "k8"]
