"""The MLflow UI server starts against a store our tracker wrote, and its REST API returns our runs.

Starts ``mlflow server`` on 127.0.0.1 (a free port) as a subprocess, polls ``/health`` for at most
``STARTUP_TIMEOUT_S`` seconds, queries the REST API, and always stops the server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from compresskit_plugins.mlflow_tracker import MlflowTracker

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

#: Generous: on a loaded 2-core CI machine the server's start-up (imports, migrations) can take a minute.
STARTUP_TIMEOUT_S = 150.0
LOSSES = [0.9, 0.6, 0.4]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(url: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read().decode())


def wait_until_up(base: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    pytest.fail(f"mlflow server did not answer /health in {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def logged_run(tmp_path: Path) -> tuple[str, str]:
    """A store with one run written by the tracker: (tracking URI, run id)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker({"tracking_uri": uri, "experiment": "ui-test"})
    run_id = tracker.start_run("kb21-sst2", tags={"strategy": "kroneckerbert21"})
    assert run_id is not None
    tracker.log_params({"steps": {"0": {"preset": "kroneckerbert21"}}})
    for step, loss in enumerate(LOSSES):
        tracker.log_metrics({"train/loss": loss}, step=step)
    tracker.log_metrics({"student/accuracy": 0.83})
    tracker.end_run()
    return uri, run_id


@pytest.fixture
def server(logged_run: tuple[str, str], tmp_path: Path) -> Iterator[str]:
    uri, _ = logged_run
    port = free_port()
    log = tmp_path / "server.log"
    command = [
        *(sys.executable, "-m", "mlflow", "server"),
        *("--backend-store-uri", uri, "--default-artifact-root", str(tmp_path / "artifacts")),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
    ]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # no job-runner processes
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(base, process, log)
        yield base
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the server and the workers it forked (its own process group)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def test_ui_serves_and_rest_api_returns_our_run(server: str, logged_run: tuple[str, str]) -> None:
    _, run_id = logged_run
    with urllib.request.urlopen(f"{server}/", timeout=10) as response:
        assert response.status == 200 and b"<html" in response.read().lower()

    query = urllib.parse.urlencode({"experiment_name": "ui-test"})
    experiment = get_json(f"{server}/api/2.0/mlflow/experiments/get-by-name?{query}")["experiment"]
    found = get_json(
        f"{server}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]}
    )
    runs = {run["info"]["run_id"]: run for run in found["runs"]}
    assert list(runs) == [run_id]
    data = runs[run_id]["data"]
    assert {"key": "steps.0.preset", "value": "kroneckerbert21"} in data["params"]
    assert {"key": "strategy", "value": "kroneckerbert21"} in data["tags"]
    assert {m["key"]: m["value"] for m in data["metrics"]}["student/accuracy"] == 0.83

    query = urllib.parse.urlencode({"run_id": run_id, "metric_key": "train/loss"})
    history = get_json(f"{server}/api/2.0/mlflow/metrics/get-history?{query}")["metrics"]
    assert sorted((m["step"], m["value"]) for m in history) == list(enumerate(LOSSES))


def test_the_printed_ui_command_works_without_an_activated_venv(
    logged_run: tuple[str, str], tmp_path: Path
) -> None:
    import shlex

    from compresskit.summary import format_summary

    uri, run_id = logged_run
    row = {"metrics": {"accuracy": 0.8}, "params": 10, "compression_factor": 1.0}
    summary = {
        "strategy": "s", "task": {"name": "glue", "options": {}}, "primary_metric": "accuracy",
        "measure": {"seq_len": 8, "batch_size": 1}, "teacher": row, "student": row,
        "model_dir": "m", "tracking_uri": uri, "run_id": run_id,
    }  # fmt: skip
    printed = next(line for line in format_summary(summary).splitlines() if " ui " in line)
    command = shlex.split(printed.split("   then ")[0])
    port = free_port()
    log = tmp_path / "ui.log"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("wb") as sink:  # PATH without the venv: what a shell without `activate` has
        process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=tmp_path,
        )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(base, process, log)
        found = get_json(f"{base}/api/2.0/mlflow/runs/get?run_id={run_id}")
        assert found["run"]["info"]["run_id"] == run_id
    finally:
        _stop(process)
