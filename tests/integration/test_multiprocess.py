"""Data-parallel training with ``accelerate launch`` and two CPU processes (gloo backend).

Two ranks with batch 4 each must take the same optimizer steps as one process with batch 4 and
gradient accumulation 2 (the same 8 examples per step, in the same seeded order), also across a kill and
a resume; both ranks must end with identical weights (gradients were all-reduced) and only rank 0 may
write checkpoints.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_training import build_run

from compresskit import checkpoint as ckpt

HERE = Path(__file__).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _launch(out: Path, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",  # two CPU processes even on a machine with a GPU
        "PYTHONPATH": str(HERE),
        "TINY_DROPOUT": "0",
        "TINY_ACCUM": "1",
        **extra_env,
    }
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",  # torchrun-style launcher; with no GPU the Trainer selects the multi-CPU backend
        "--num_processes=2",
        "--num_machines=1",
        "--mixed_precision=no",
        "--dynamo_backend=no",
        f"--main_process_port={_free_port()}",
        str(HERE / "tiny_training.py"),
        str(out),
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)


@pytest.mark.multiprocess
def test_two_cpu_processes_train_in_sync_resume_and_only_rank0_writes(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    out.mkdir()
    # 10 batches of 4 per epoch split over 2 ranks: 5 optimizer steps per epoch, 3 epochs = 15 steps,
    # a checkpoint every 3. Both ranks SIGKILL themselves in step 8: the run resumes from step 6.
    killed = _launch(out, TINY_KILL_AT_CALL="8")
    assert killed.returncode != 0
    assert ckpt.find_latest(out / ckpt.CHECKPOINTS_DIR) == out / ckpt.CHECKPOINTS_DIR / ckpt.checkpoint_name(
        6
    )
    done = _launch(out)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]

    reports = [json.loads((out / f"result-rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in reports] == [0, 1] and all(r["world"] == 2 for r in reports)
    assert all(r["result"]["steps"] == 15 and r["result"]["resumed_from_step"] == 6 for r in reports)
    assert reports[0]["writes"] == [9, 12, 15] and reports[1]["writes"] == []

    rank0 = torch.load(out / "weights-rank0.pt", weights_only=True)
    rank1 = torch.load(out / "weights-rank1.pt", weights_only=True)
    assert all(torch.equal(rank0[name], rank1[name]) for name in rank0)

    # one process, batch 4, accumulation 2 sees the same 8 examples per step in the same order
    trainer, model = build_run(tmp_path / "single", accum=2, dropout=0.0)
    single = trainer.train()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(rank0[name], tensor, rtol=1e-4, atol=1e-5, msg=f"{name} differs")
    for term, values in single.losses.items():
        assert reports[0]["result"]["losses"][term] == pytest.approx(values, rel=1e-4, abs=1e-6)
