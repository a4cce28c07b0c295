"""The Prefect layer: the pipeline's flows, its command line and its deployments."""

from polymath.cpu_kernels import pin_cpu_kernels

# Every entry point (the CLI, a deployment's worker, the benchmarks) imports this package before torch: CPU runs
# compute with one kernel set on every x86 machine (polymath/cpu_kernels.py).
pin_cpu_kernels()
