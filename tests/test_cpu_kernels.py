"""Entry points pin torch's CPU kernel set before torch loads, so CPU figures reproduce across x86 machines."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROBE = "import {first}; import torch; print(torch.backends.cpu.get_cpu_capability())"

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 kernel sets")


def _capability(first: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR",
                                                               "POLYMATH_CPU_KERNELS")}
    out = subprocess.run([sys.executable, "-c", PROBE.format(first=first)], cwd=ROOT, env={**clean, **env},
                         capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_importing_the_flows_pins_avx2_unless_told_otherwise():
    native = _capability("os")
    assert _capability("flows") == "AVX2"
    assert _capability("flows", POLYMATH_CPU_KERNELS="native") == native
    assert _capability("flows", ATEN_CPU_CAPABILITY="default") == "DEFAULT"  # the user's own setting wins


def test_a_process_that_already_loaded_torch_keeps_its_kernels():
    # its worker processes inherit the environment: pinning now would give them another set than the parent's
    native = _capability("os")
    assert _capability("torch; import flows") == native
