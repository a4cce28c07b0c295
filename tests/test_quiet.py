"""A quiet run: what a dependency's first import prints stays off the console, in every process it starts."""

from __future__ import annotations

import os
import subprocess
import sys

from polymath.quiet import QUIET_ENV


def _import_stderr(tmp_path, extra_env: dict[str, str]) -> str:
    # source a dependency ships, compiled on its first import (cellpylib's `memoize is "recursive"`)
    (tmp_path / "legacy_dependency.py").write_text('def f(memoize):\n    return memoize is "recursive"\n')
    env = {name: value for name, value in os.environ.items() if name != "PYTHONWARNINGS"}
    env.update({"PYTHONPATH": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1", **extra_env})
    run = subprocess.run([sys.executable, "-c", "import legacy_dependency"], env=env, capture_output=True, text=True)
    return run.stderr


def test_worker_processes_of_a_quiet_run_print_no_syntax_warnings_of_dependencies(tmp_path):
    assert "SyntaxWarning" in _import_stderr(tmp_path, {})  # what a user saw on the demo's first run
    assert _import_stderr(tmp_path, QUIET_ENV) == ""
