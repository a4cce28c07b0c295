"""Test environment: offline, a private Prefect home, no analytics."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_PREFECT_HOME = tempfile.mkdtemp(prefix="polymath-prefect-")
for name, value in {
    "PREFECT_HOME": _PREFECT_HOME,
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ[name] = value
if os.environ.get("PYTEST_XDIST_WORKER"):
    # make test runs two pytest workers on two cores: one OpenMP thread each, or torch's spinning threads
    # oversubscribe the cores (set before any test module imports torch; subprocesses inherit it)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for every flow test of the session (10-30 s to start on 2 cores)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="session")
def prefect_api_url(prefect_harness) -> str:
    """The session server's API address, for a subprocess that should use it instead of starting its own."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def micro_config_path() -> Path:
    return DATA / "micro.yaml"
