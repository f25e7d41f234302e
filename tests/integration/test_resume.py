"""Exact resume: a run interrupted at any step and resumed ends with bitwise the same weights.

The interrupted runs are killed for real (SIGKILL in a subprocess) or crash with an exception in-process;
the comparison is ``torch.equal`` on every tensor of the final state dict.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_training import build_run, compute_loss

from compresskit import checkpoint as ckpt

HERE = Path(__file__).parent


def _assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"tensors differ after resume: {different}"


def _run_script(out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONPATH": str(HERE),
        **env,
    }
    return subprocess.run(
        [sys.executable, str(HERE / "tiny_training.py"), str(out)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_killed_run_resumes_to_bitwise_identical_weights(tmp_path: Path) -> None:
    # 40 examples / batch 4 = 10 batches per epoch, 5 optimizer steps per epoch (accumulation 2),
    # 3 epochs = 15 steps, a checkpoint every 3 steps. Call 17 is in step 9 (epoch 1): the newest
    # checkpoint is step 6, in the middle of epoch 1 (batch 2 of 10), with dropout RNG in play.
    interrupted = tmp_path / "interrupted"
    killed = _run_script(interrupted, TINY_KILL_AT_CALL="17")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (interrupted / "result-rank0.json").exists()
    latest = ckpt.find_latest(interrupted / ckpt.CHECKPOINTS_DIR)
    assert latest is not None and latest.name == ckpt.checkpoint_name(6)

    # The uninterrupted reference and the resumed run go on in this process, on one thread like the
    # script (the resume is a new process all the same: nothing of the killed one survives).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer, expected = build_run(tmp_path / "baseline")
        reference = trainer.train()
        trainer, model = build_run(interrupted)
        resumed = trainer.train()
    finally:
        torch.set_num_threads(threads)
    assert resumed.resumed_from_step == 6 and resumed.steps == 15
    _assert_bitwise_equal(expected.state_dict(), model.state_dict())
    assert resumed.losses == reference.losses


class _Crash(Exception):
    pass


def _crashing(at_call: int) -> Any:
    calls = 0

    def compute(model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        nonlocal calls
        calls += 1
        if calls == at_call:
            raise _Crash
        return compute_loss(model, batch)

    return compute


@pytest.mark.parametrize(
    ("crash_call", "resume_step", "checkpoint_every", "precision"),
    [
        (13, 5, 5, "no"),  # newest checkpoint closes epoch 0: resume starts epoch 1 with a fresh iterator
        (28, 12, 4, "no"),  # mid-epoch 2 (batch 4 of 10), accumulation window restarted cleanly
        (17, 6, 3, "bf16"),  # bf16 autocast on the CPU, mid-epoch 1
    ],
)
def test_crash_and_resume_in_process_is_exact(
    tmp_path: Path, crash_call: int, resume_step: int, checkpoint_every: int, precision: str
) -> None:
    settings = {"checkpoint_every": checkpoint_every, "mixed_precision": precision, "cpu": True}
    trainer, model = build_run(tmp_path / "a", **settings)
    reference = trainer.train()
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    crashing, _ = build_run(tmp_path / "b", compute=_crashing(crash_call), **settings)
    with pytest.raises(_Crash):
        crashing.train()
    trainer, model = build_run(tmp_path / "b", **settings)
    result = trainer.train()

    assert result.resumed_from_step == resume_step
    _assert_bitwise_equal(expected, model.state_dict())
    assert result.losses == reference.losses
    assert result.steps == reference.steps == 15


def _interrupting(at_call: int) -> Any:
    crash = _crashing(at_call)

    def compute(model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        try:
            return crash(model, batch)
        except _Crash:
            raise KeyboardInterrupt from None  # what Ctrl-C (or SIGTERM, errors.Terminated) raises

    return compute


@pytest.mark.parametrize(
    ("interrupt_call", "checkpoint_every", "resume_step"),
    [
        (13, 5, 6),  # between steps 6 and 7: step 6 is saved on the way out
        (14, 5, 5),  # half-way through an accumulated step: nothing saved, the step-5 checkpoint stays
        (11, 4, 5),  # right after step 5 closed epoch 0: an epoch-closing checkpoint
        (23, 4, 11),  # mid-epoch 2
    ],
)
def test_an_interrupt_saves_the_last_completed_step_and_resumes_exactly(
    tmp_path: Path, interrupt_call: int, checkpoint_every: int, resume_step: int
) -> None:
    settings = {"checkpoint_every": checkpoint_every, "cpu": True}
    trainer, model = build_run(tmp_path / "a", **settings)
    reference = trainer.train()
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    interrupted, _ = build_run(tmp_path / "b", compute=_interrupting(interrupt_call), **settings)
    with pytest.raises(KeyboardInterrupt):
        interrupted.train()
    trainer, model = build_run(tmp_path / "b", **settings)
    result = trainer.train()

    assert result.resumed_from_step == resume_step
    _assert_bitwise_equal(expected, model.state_dict())
    assert result.losses == reference.losses


def _tiny_bert_run(output_dir: Path, compute: Any) -> tuple[Any, Any]:
    from transformers import BertConfig, BertForMaskedLM

    from compresskit import Trainer, TrainingConfig

    config = BertConfig(
        vocab_size=99,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    model = BertForMaskedLM(config)  # decoder weight tied to the word embeddings
    generator = torch.Generator().manual_seed(11)
    ids = torch.randint(1, 99, (24, 12), generator=generator)
    rows = [{"input_ids": row, "labels": row} for row in ids]
    loader = torch.utils.data.DataLoader(rows, batch_size=4, shuffle=True)
    settings = TrainingConfig(
        learning_rate=1e-3, num_epochs=2, checkpoint_every=2, log_every=1, progress=False, cpu=True
    )
    return Trainer(model, settings, loader, compute, output_dir=output_dir), model


def test_tiny_bert_with_tied_weights_resumes_exactly(tmp_path: Path) -> None:
    mlm = lambda model, batch: {"loss": model(**batch).loss}  # noqa: E731
    trainer, model = _tiny_bert_run(tmp_path / "a", mlm)
    trainer.train()
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    calls = 0

    def crash_at_8(model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        nonlocal calls
        calls += 1
        if calls == 8:
            raise _Crash
        return mlm(model, batch)

    with pytest.raises(_Crash):
        _tiny_bert_run(tmp_path / "b", crash_at_8)[0].train()
    trainer, model = _tiny_bert_run(tmp_path / "b", mlm)
    assert trainer.train().resumed_from_step == 6
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    _assert_bitwise_equal(expected, model.state_dict())
