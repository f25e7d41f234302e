"""The student as an MLflow model: logged with signature and input example, loaded by
``mlflow.pyfunc.load_model("runs:/<id>/model")``, served by ``mlflow models serve`` on 127.0.0.1; the
run carries MLflow's standard tags, a description and its own summary table and Pareto plot."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from compresskit_plugins.mlflow_tracker import MlflowTracker

import compresskit
from compresskit.tiny_models import tiny_model, tiny_tokenizer

TEXTS = ["w3 w7 w9 w11", "w40 w2", "w98 w97 w96 w95 w94"]
#: Generous: `mlflow models serve` imports MLflow, the model's code and torch on a loaded 2-core machine.
STARTUP_TIMEOUT_S = 240.0


@pytest.fixture
def logged(tmp_path: Path) -> tuple[str, str, list[dict[str, object]]]:
    """(tracking URI, run id, expected predictions) of a run that logged a compressed classifier."""
    model = tiny_model("bert")
    model.config.id2label, model.config.label2id = {0: "neg", 1: "pos"}, {"neg": 0, "pos": 1}
    compresskit.decompose(model, [{"types": ["linear_except_head"], "decomposition": "kronecker",
                                   "options": {"b_shape": [2, 2]}}])  # fmt: skip
    tokenizer = tiny_tokenizer()
    compresskit.save(model, tmp_path / "student", tokenizer=tokenizer)
    with torch.no_grad():
        probabilities = model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits.softmax(-1)
    expected = [{"label": ["neg", "pos"][int(p.argmax())], "score": float(p.max())} for p in probabilities]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker({"tracking_uri": uri, "experiment": "models"})
    run_id = tracker.start_run("tiny", tags={"strategy": "tiny"})
    assert run_id is not None
    tracker.set_description("**tiny**: Kronecker attention")
    tracker.log_metrics({"student/accuracy": 0.5, "teacher/accuracy": 0.6, "params": 10.0})
    summary = {
        "strategy": "tiny", "primary_metric": "accuracy",
        "teacher": {"metrics": {"accuracy": 0.6}, "params": 20, "latency_ms": 2.0},
        "student": {"metrics": {"accuracy": 0.5}, "params": 10, "latency_ms": 1.0},
    }  # fmt: skip
    tracker.log_summary(summary, "the printed table")
    tracker.log_model(tmp_path / "student", input_example=[{"text": TEXTS[0]}])
    tracker.end_run()
    return uri, run_id, expected


def test_pyfunc_model_predicts_like_the_student(
    logged: tuple[str, str, list[dict[str, object]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    import pandas as pd

    uri, run_id, expected = logged
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # read by runs:/ URIs; the global URI stays unset
    loaded = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    predicted = loaded.predict(pd.DataFrame({"text": TEXTS}))
    assert predicted["label"].tolist() == [row["label"] for row in expected]
    assert predicted["score"].tolist() == pytest.approx([row["score"] for row in expected], abs=1e-6)
    info = mlflow.models.get_model_info(f"runs:/{run_id}/model")
    assert [c["name"] for c in info.signature.inputs.to_dict()] == ["text", "text_pair"]
    assert info.saved_input_example_info is not None

    run = mlflow.MlflowClient(uri).get_run(run_id)
    tags = run.data.tags
    assert tags["mlflow.user"] and tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"]
    assert tags["mlflow.note.content"] == "**tiny**: Kronecker attention"
    artifacts = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(run_id, "summary")}
    assert artifacts == {"summary/summary.txt", "summary/pareto.png"}
    assert [m.model_id for m in run.outputs.model_outputs]  # the model is linked to the run


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
@pytest.mark.multiprocess
def test_mlflow_models_serve_serves_the_student(
    logged: tuple[str, str, list[dict[str, object]]], tmp_path: Path
) -> None:
    uri, run_id, expected = logged
    port = _free_port()
    log = tmp_path / "serve.log"
    command = [
        *(sys.executable, "-m", "mlflow", "models", "serve", "-m", f"runs:/{run_id}/model"),
        *("--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
    ]
    # MLflow starts the scoring server as `uvicorn`, which lives beside this interpreter.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": path}
    with log.open("wb") as sink:
        server = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_until_up(base, server, log)
        body = json.dumps({"dataframe_split": {"columns": ["text"], "data": [[t] for t in TEXTS]}}).encode()
        request = urllib.request.Request(f"{base}/invocations", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            predictions = json.loads(response.read())["predictions"]
        assert [row["label"] for row in predictions] == [row["label"] for row in expected]
        assert [row["score"] for row in predictions] == pytest.approx(
            [r["score"] for r in expected], abs=1e-6
        )
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=5)


def _wait_until_up(base: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow models serve exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    pytest.fail(
        f"mlflow models serve did not answer /ping in {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-3000:]}"
    )
