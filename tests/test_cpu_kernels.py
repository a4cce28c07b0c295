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


def _env_after(first: str, name: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR",
                                                               "POLYMATH_CPU_KERNELS")}
    out = subprocess.run([sys.executable, "-c", f"import {first}, os; print(os.environ.get('{name}'))"], cwd=ROOT,
                         env={**clean, **env}, capture_output=True, text=True)
    return (out.stdout + out.stderr).strip().splitlines()[-1]


def test_the_compatible_set_pins_the_mkl_branch_every_x86_processor_honours():
    assert _env_after("flows", "MKL_CBWR") == "AVX2"
    assert _env_after("flows", "MKL_CBWR", POLYMATH_CPU_KERNELS="compatible") == "COMPATIBLE"
    assert "choose one of avx2, compatible, native" in _env_after("flows", "MKL_CBWR", POLYMATH_CPU_KERNELS="sse")


@pytest.mark.parametrize("vendor, flags, branch, path", [
    ("AuthenticAMD", "fpu avx2", "AVX2", "chosen by MKL for Test CPU 1"),  # MKL ignores the branch off Intel
    ("AuthenticAMD", "fpu avx2 avx512f", "AVX2", "chosen by MKL for Test CPU 1 (AVX-512)"),
    ("AuthenticAMD", "fpu avx2", "COMPATIBLE", "COMPATIBLE"),
    ("GenuineIntel", "fpu avx2 avx512f", "AVX2", "AVX2"),
    ("GenuineIntel", "fpu avx2", "", "chosen by MKL for Test CPU 1"),
])
def test_runs_record_the_mkl_path_they_computed_with(tmp_path, monkeypatch, vendor, flags, branch, path):
    from polymath.cpu_kernels import mkl_code_path

    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nvendor_id\t: {vendor}\nmodel name\t: Test CPU 1\nflags\t\t: {flags}\n"
                    f"processor\t: 1\nvendor_id\t: {vendor}\nmodel name\t: Test CPU 1\nflags\t\t: {flags}\n")
    monkeypatch.setenv("MKL_CBWR", branch)
    assert mkl_code_path(info) == path
