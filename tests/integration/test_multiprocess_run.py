"""The whole pipeline under ``accelerate launch --num_processes 2`` (CPU, gloo) on a tiny strategy.

Two processes with batch 8 each must produce the student one process produces with batch 8 and gradient
accumulation 2 (the same 16 examples per optimizer step), bit for bit: every training stage (teacher
fine-tuning, distillation) is data-parallel. Only
the main process writes (one MLflow run, FINISHED; one copy of each message).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_pipeline import make_tiny_teacher, tiny_strategy_dict

import compresskit
from compresskit.config import dumps_toml

#: Largest weight difference allowed between the two-process and the one-process student: none. With two
#: processes the all-reduced mean (g₁ + g₂)/2 equals the accumulated g₁/2 + g₂/2 exactly in floating
#: point (halving is exact), and every process sees the batches one process would see. (Any slack would
#: hide a stage that is not data-parallel: Adam moves every weight by about the learning rate per step,
#: so a rank training on its own half of the data differs by ~1e-3 here.)
TOLERANCE = 0.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(tmp_path: Path, data_dir: Path, *, accumulation: int, store: Path) -> Path:
    teacher = tmp_path / "teacher"
    if not teacher.exists():
        make_tiny_teacher(teacher, data_dir)
        config = json.loads((teacher / "config.json").read_text())  # no dropout: ranks draw other masks
        config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        (teacher / "config.json").write_text(json.dumps(config))
    strategy: dict[str, Any] = tiny_strategy_dict(teacher, data_dir)
    training = {"batch_size": 8, "max_steps": 3, "gradient_accumulation_steps": accumulation}
    strategy["finetune"]["training"].update(training)
    strategy["steps"][1]["options"]["training"].update(training)
    strategy["tracking"] = {"tracker": "mlflow", "experiment": "ddp", "tracking_uri": f"sqlite:///{store}"}
    path = tmp_path / f"accumulation-{accumulation}.toml"
    path.write_text(dumps_toml(strategy))
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


@pytest.mark.multiprocess
def test_run_under_accelerate_launch_matches_one_process(tmp_path: Path, data_dir: Path) -> None:
    store = tmp_path / "mlflow.db"
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2",
        "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no",
        f"--main_process_port={_free_port()}", "-m", "compresskit", "run",
        str(_config(tmp_path, data_dir, accumulation=1, store=store)), "--output", str(tmp_path / "two"),
    ]  # fmt: skip
    two = subprocess.run(launch, env=_env(), capture_output=True, text=True, timeout=500)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-5000:]
    one_config = _config(tmp_path, data_dir, accumulation=2, store=tmp_path / "single.db")
    single = [sys.executable, "-m", "compresskit", "run", str(one_config), "--output", str(tmp_path / "one")]
    single.append("--no-tracking")  # the reference needs no MLflow run
    one = subprocess.run(single, env=_env(), capture_output=True, text=True, timeout=500)
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-5000:]

    assert two.stdout.count("steps[0]:decompose: running") == 1  # messages printed once
    state = json.loads((tmp_path / "two" / "state.json").read_text())
    assert state["run_status"] == "FINISHED"
    assert state["stages"]["teacher"]["result"]["steps"] == 3  # fine-tuning ran data-parallel
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["student"]["params"] > 0

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("ddp")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert [run.info.status for run in runs] == ["FINISHED"]  # one tracked run, by the main process

    ours = compresskit.load(tmp_path / "two" / "model").state_dict()
    reference = compresskit.load(tmp_path / "one" / "model").state_dict()
    assert sorted(ours) == sorted(reference)
    worst = max(float((ours[k].float() - reference[k].float()).abs().max()) for k in ours)
    assert worst <= TOLERANCE, f"two processes and one process differ by {worst:.3g}"
    trained = compresskit.load(tmp_path / "two" / "steps" / "00-decompose" / "model").state_dict()
    assert any(not torch.equal(trained[k], ours[k]) for k in ours)  # distillation did change the student
