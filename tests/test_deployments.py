"""Deployments as users run them: prefect.yaml deployed to a real server, a flow run picked up by a process worker.

The end-to-end test deploys the repository's prefect.yaml as written to the session's Prefect server, starts a
process worker as a subprocess (a temporary Prefect home), runs the curate deployment on the micro profile and
a run with a refused override, and stops the worker by its pid.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from experiments.entropy import DEFAULT_ARMS, EntropyExperiment
from pipeline.deploy_params import allowed_override, check_overrides, resolve_profile_name, resolve_workspace
from polymath.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
DEPLOYMENTS = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
PREFECT = str(Path(sys.executable).with_name("prefect"))


# ---------------------------------------------------------------- parameters a run may set


@pytest.mark.parametrize("key", ["train.lr", "train.steps", "evaluate.k", "train.entropy.mode", "merge.methods",
                                 "model.tiny.sft_steps", "workers", "train.use_vllm"])
def test_settings_a_run_may_change(key):
    assert allowed_override(key)


@pytest.mark.parametrize("key", ["model.trust_remote_code", "model.path", "model.source", "data.path",
                                 "data.sources.0.path", "data.format", "train.accelerate_config",
                                 "train.report_to", "curate.embedding_model", "merge.base_model", "name",
                                 "no.such.key"])
def test_keys_that_load_code_or_move_data_are_refused(key):
    assert not allowed_override(key)
    with pytest.raises(ConfigError, match=re.escape(repr(key))):
        check_overrides([f"{key}=x"])


def test_profile_is_a_name_and_workspace_stays_under_the_root(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYMATH_DEPLOY_ROOT", str(tmp_path / "root"))
    assert resolve_workspace(None) == (tmp_path / "root").resolve()
    assert resolve_workspace("nightly") == (tmp_path / "root" / "nightly").resolve()
    for outside in ("../elsewhere", str(tmp_path / "other"), "/etc"):
        with pytest.raises(ConfigError, match="outside the deploy root"):
            resolve_workspace(outside)
    assert resolve_profile_name("demo").name == "demo.yaml"
    for not_a_name in ("../tests/data/micro", str(REPO / "configs" / "demo.yaml"), "nonexistent"):
        with pytest.raises(ConfigError, match="not a profile of this worker"):
            resolve_profile_name(not_a_name)


def test_prefect_yaml_matches_the_code_it_describes():
    for dep in DEPLOYMENTS:
        module, name = dep["entrypoint"].rsplit(".", 1)
        assert ":" not in dep["entrypoint"], "a file entrypoint puts flows/ on the import path"
        flow = getattr(__import__(module, fromlist=[name]), name)
        assert hasattr(flow, "fn"), f"{dep['entrypoint']} is not a Prefect flow"
        if (profile := dep.get("parameters", {}).get("config")) is not None:
            resolve_profile_name(profile)
    experiment = next(d for d in DEPLOYMENTS if d["name"] == "experiment-entropy")
    seeds = experiment["parameters"]["seeds"]
    assert seeds == EntropyExperiment().seeds
    assert f"{len(DEFAULT_ARMS)} arms x {len(seeds)} seeds" in experiment["description"]
    # every work pool a deployment names is created in the scheduling guide
    guide = (REPO / "docs" / "scheduling.md").read_text()
    for pool in {d["work_pool"]["name"] for d in DEPLOYMENTS}:
        assert f"prefect work-pool create {pool} --type process" in guide


# ---------------------------------------------------------------- one writer per workspace


def test_runs_on_one_workspace_take_turns(prefect_harness, tmp_path):
    import threading

    from prefect import flow

    from flows.deployments import one_writer

    spans: list[tuple[float, float]] = []

    @flow
    def hold(root: str) -> None:
        with one_writer(Path(root)):
            start = time.monotonic()
            time.sleep(1.0)
            spans.append((start, time.monotonic()))

    threads = [threading.Thread(target=hold, args=(str(tmp_path),)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(spans) == 2
    first, second = sorted(spans)
    assert second[0] >= first[1], f"two runs held one workspace at once: {spans}"


# ---------------------------------------------------------------- end to end through a worker


def _stop(proc: subprocess.Popen) -> None:
    """Stop ``proc`` and its children (it leads its own process group) by its pid."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:  # a test worker holds nothing worth a graceful shutdown: 5 s, then SIGKILL
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _cli(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    done = subprocess.run([PREFECT, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


def _wait_for_state(api: str, run_id: str, timeout: float = 150) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = httpx.get(f"{api}/flow_runs/{run_id}").json()
        if run["state"]["type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
            return run
        time.sleep(1)
    raise AssertionError(f"flow run {run_id} did not finish in {timeout} s (last state {run['state']['type']})")


def _run_deployment(api: str, name: str, parameters: dict) -> str:
    deployment = httpx.get(f"{api}/deployments/name/polymath/{name}").json()
    response = httpx.post(f"{api}/deployments/{deployment['id']}/create_flow_run", json={"parameters": parameters})
    response.raise_for_status()
    return response.json()["id"]


@pytest.fixture()
def prefect_services(prefect_api_url, tmp_path):
    """A process worker as a subprocess, with the repository's deployments applied to the session's server."""
    api = prefect_api_url
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "POLYMATH_REPO": str(REPO),
        "POLYMATH_PROFILES": str(REPO / "tests" / "data"),
        "POLYMATH_DEPLOY_ROOT": str(tmp_path / "workspaces"),
    }
    _cli(env, "work-pool", "create", "polymath", "--type", "process")
    _cli(env, "--no-prompt", "deploy", "--name", "curate")
    with (tmp_path / "worker.log").open("w") as worker_log:
        worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "polymath"], cwd=tmp_path, env=env,
                                  stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield api, tmp_path
        finally:
            _stop(worker)
    assert worker.poll() is not None, f"worker {worker.pid} still running"


def _artifact_keys(api: str, run_id: str) -> set[str]:
    """Keys of the artifacts published by flow run ``run_id`` and its subflows (the session's server also
    holds other tests' runs)."""
    children = httpx.post(f"{api}/flow_runs/filter",
                          json={"flow_runs": {"parent_flow_run_id": {"any_": [run_id]}}}).json()
    runs = [run_id, *(c["id"] for c in children)]
    artifacts = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": runs}}}).json()
    return {a["key"] for a in artifacts}


def test_a_deployment_runs_on_a_worker_to_completed(prefect_services):
    api, tmp = prefect_services
    refused = _run_deployment(api, "curate", {"config": "micro", "overrides": ["model.trust_remote_code=true"],
                                              "workspace": "micro"})
    ok = _run_deployment(api, "curate", {"config": "micro", "workspace": "micro"})

    run = _wait_for_state(api, refused)
    logs = (tmp / "worker.log").read_text()
    assert run["state"]["type"] == "FAILED", logs[-3000:]
    assert "trust_remote_code" in run["state"]["message"], run["state"]["message"]

    run = _wait_for_state(api, ok)
    assert run["state"]["type"] == "COMPLETED", (tmp / "worker.log").read_text()[-5000:]
    curation = {"curation-diversity", "curation-projection"}
    assert curation <= _artifact_keys(api, ok)  # from the curate subflow
    assert not curation & _artifact_keys(api, refused)  # refused before any stage ran
    workspace = tmp / "workspaces" / "micro"
    manifests = [json.loads(p.read_text()) for p in workspace.glob("artifacts/*/*/manifest.json")]
    assert {m["stage"] for m in manifests} >= {"data", "curate"}
    assert all(m["status"] == "finished" for m in manifests)
    assert (workspace / "polymath.duckdb").exists()
