"""One CPU kernel set on every x86 machine, so that a CPU run gives the same numbers wherever it runs.

torch dispatches its CPU kernels to the widest vector instructions the processor has (AVX2, AVX512), and MKL
picks its own code path per processor; the kernel sets round differently, and a chaotic run (the tiny model's
warm start: a few ulps become another kept step) then ends elsewhere. Pinning the set that every x86-64
machine of the last decade has (``ATEN_CPU_CAPABILITY=avx2``, and MKL's conditional numerical reproducibility
``MKL_CBWR=AVX2``) makes the demo's figures reproduce across them; the cost on the demo's small matrices was
within timing noise here. ``POLYMATH_CPU_KERNELS=native`` keeps the machine's own set; a value the user set
for either variable is kept. Both must be set before torch is imported, and are inherited by worker processes.
"""

from __future__ import annotations

import os
import platform
import sys

ENV = "POLYMATH_CPU_KERNELS"


def pin_cpu_kernels() -> str | None:
    """Pin the kernel set (``$POLYMATH_CPU_KERNELS``, default avx2); the set pinned, or None when nothing was:
    ``native``, a machine that is not x86-64, or torch already imported (its kernels are chosen; a worker
    process must not compute with another set than its parent)."""
    choice = os.environ.get(ENV, "avx2").strip().lower()
    if choice == "native" or platform.machine().lower() not in ("x86_64", "amd64") or "torch" in sys.modules:
        return None
    os.environ.setdefault("ATEN_CPU_CAPABILITY", choice)
    os.environ.setdefault("MKL_CBWR", choice.upper())
    return choice
