"""The GPU first-contact script runs every section on CPU in miniature: what a device session will run works."""

from __future__ import annotations

import importlib


def test_every_section_of_the_device_check_runs_on_cpu(capsys):
    check = importlib.import_module("bench.gpu_check")  # by module path: its isolation section pickles a function
    assert check.main(["--shape", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "6 of 6 sections ok" in out
    assert "rank 96 merged adapter" in out and "rollouts HF (kv-cache)" in out
    gap = float(out.split("max |log p gap| ")[1].split()[0])
    assert gap < 1e-4  # the merged adapter serves the dense weights it stands for
