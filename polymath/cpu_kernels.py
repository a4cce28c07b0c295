"""One CPU kernel set, so that a CPU run gives the same numbers on every machine it can.

torch dispatches its own CPU kernels to the widest vector instructions the processor has (AVX2, AVX512), and
MKL, which computes torch's matrix products, picks its own code path per processor; the paths round
differently, and a chaotic run (the tiny model's warm start and its GRPO experts: a few ulps become another
kept step or another sampled token) then ends elsewhere.

- ``avx2`` (default): ``ATEN_CPU_CAPABILITY=avx2`` pins torch's kernels on every x86-64 machine, and
  ``MKL_CBWR=AVX2`` pins MKL's, but MKL honours a branch other than AUTO or COMPATIBLE on Intel processors
  only: on an AMD processor MKL still chooses its own path, and two AMD machines (one with AVX-512, one
  without) trained two of the demo's four experts differently (docs/results.md).
- ``compatible``: MKL's SSE2 branch (``MKL_CBWR=COMPATIBLE``), the one MKL reproduces on any x86 processor;
  its matrix products are slower (bench/cpu_kernels.py measures by how much).
- ``native``: the machine's own kernels.

Runs record the MKL path they computed with (``mkl_code_path``), so ``polymath status`` says when a finished
run was computed on a path this machine does not take. Both variables must be set before torch is imported;
worker processes inherit them; a value the user set for either is kept.
"""

from __future__ import annotations

import os
import platform
import sys
from functools import lru_cache
from pathlib import Path

ENV = "POLYMATH_CPU_KERNELS"
CHOICES = {"avx2": ("avx2", "AVX2"), "compatible": ("avx2", "COMPATIBLE")}


def pin_cpu_kernels() -> str | None:
    """Pin the kernel set (``$POLYMATH_CPU_KERNELS``, default avx2); the set pinned, or None when nothing was:
    ``native``, a machine that is not x86-64, or torch already imported (its kernels are chosen; a worker
    process must not compute with another set than its parent)."""
    choice = os.environ.get(ENV, "avx2").strip().lower()
    if choice == "native" or platform.machine().lower() not in ("x86_64", "amd64") or "torch" in sys.modules:
        return None
    if choice not in CHOICES:
        raise SystemExit(f"{ENV}={choice!r}: choose one of {', '.join([*CHOICES, 'native'])}")
    aten, mkl = CHOICES[choice]
    os.environ.setdefault("ATEN_CPU_CAPABILITY", aten)
    os.environ.setdefault("MKL_CBWR", mkl)
    return choice


@lru_cache(maxsize=None)  # every manifest and status asks; the processor does not change while a process runs
def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, str, bool]:
    """(vendor, model name, has AVX-512) of this machine's processor, as far as it can be read."""
    vendor, model, avx512 = "", platform.processor(), False
    try:
        for line in cpuinfo.read_text().splitlines():
            name, _, value = line.partition(":")
            name, value = name.strip(), value.strip()
            if name == "vendor_id" and not vendor:
                vendor = value
            elif name == "model name" and value:
                model = value
            elif name == "flags":
                avx512 = "avx512f" in value.split()
                break
    except OSError:
        pass
    return vendor, model, avx512


def mkl_code_path(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The MKL code path this process computes with: the pinned branch where MKL honours it (COMPATIBLE
    everywhere, any branch on Intel), else the processor MKL chooses for."""
    branch = os.environ.get("MKL_CBWR", "").split(",")[0].strip().upper().removeprefix("BRANCH=")
    vendor, model, avx512 = cpu_model(cpuinfo)
    if branch == "COMPATIBLE" or (branch not in ("", "AUTO") and vendor == "GenuineIntel"):
        return branch
    return f"chosen by MKL for {model or 'this processor'}{' (AVX-512)' if avx512 else ''}"
