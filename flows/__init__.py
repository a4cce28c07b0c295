"""The Prefect layer: the pipeline's flows, its command line and its deployments."""

import os

from polymath.cpu_kernels import pin_cpu_kernels

# Every entry point (the CLI, a deployment's worker, the benchmarks) imports this package first. Offline by
# default: models load by local path, nothing is fetched from a hub at run time; no Prefect analytics. The
# temporary Prefect server gets 120 s to start instead of 20: its first start on a fresh install compiles
# and migrates its database, which took longer than 20 s on 2 cores and failed `make demo`.
for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "polymath",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}.items():
    os.environ.setdefault(_name, _value)

# CPU runs compute with one kernel set on every x86 machine (polymath/cpu_kernels.py); before torch loads.
pin_cpu_kernels()
