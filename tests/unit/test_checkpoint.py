"""Checkpoint files: atomic writes, half-written folders ignored, RNG round trip, pruning, fingerprints."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from compresskit import CheckpointError, Trainer, TrainingConfig
from compresskit import checkpoint as ckpt


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))


def _write(root: Path, step: int, model: torch.nn.Module | None = None) -> Path:
    return ckpt.write_checkpoint(
        root, step, model=model or _model(), state={"step": step}, optimizer={"x": torch.ones(2)}
    )


def _draws() -> tuple[float, float, torch.Tensor]:
    return random.random(), float(np.random.rand()), torch.rand(3)


def test_rng_state_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    ckpt.write_checkpoint(tmp_path, 1, model=_model(), state={"step": 1}, rng=ckpt.capture_rng_state())
    expected = _draws()
    _draws()  # move every generator on
    loaded = ckpt.read_checkpoint(tmp_path / ckpt.checkpoint_name(1))
    assert loaded.rng is not None
    ckpt.restore_rng_state(loaded.rng)
    again = _draws()
    assert again[:2] == expected[:2] and torch.equal(again[2], expected[2])


def test_write_is_complete_and_points_latest_at_it(tmp_path: Path) -> None:
    model = _model()
    folder = _write(tmp_path, 7, model)
    assert folder == tmp_path / "checkpoint-00000007"
    assert (folder / ckpt.COMPLETE_MARKER).is_file()
    assert not list(tmp_path.glob("*.tmp"))
    assert (tmp_path / ckpt.LATEST_POINTER).read_text().strip() == folder.name
    restored = _model()
    ckpt.load_model(restored, folder)
    assert all(
        torch.equal(a, b)
        for a, b in zip(restored.state_dict().values(), model.state_dict().values(), strict=True)
    )
    assert torch.equal(ckpt.read_checkpoint(folder).optimizer["x"], torch.ones(2))  # type: ignore[index]


def test_half_written_checkpoints_are_ignored(tmp_path: Path) -> None:
    good = _write(tmp_path, 4)
    # a crash during a later write leaves a .tmp folder; a folder without the marker is not trusted
    tmp_folder = tmp_path / "checkpoint-00000006.tmp"
    tmp_folder.mkdir()
    (tmp_folder / ckpt.STATE_FILE).write_text('{"step": 6}')
    no_marker = tmp_path / "checkpoint-00000008"
    no_marker.mkdir()
    (no_marker / ckpt.STATE_FILE).write_text('{"step": 8}')
    (tmp_path / ckpt.LATEST_POINTER).write_text("checkpoint-00000008\n")
    assert ckpt.find_latest(tmp_path) == good
    assert ckpt.complete_checkpoints(tmp_path) == [good]


def test_latest_pointer_is_not_needed(tmp_path: Path) -> None:
    _write(tmp_path, 2)
    newer = _write(tmp_path, 3)
    (tmp_path / ckpt.LATEST_POINTER).unlink()
    assert ckpt.find_latest(tmp_path) == newer


def test_trainer_resumes_from_the_last_complete_checkpoint(tmp_path: Path) -> None:
    data = TensorDataset(torch.randn(8, 3), torch.randn(8, 4))

    def trainer() -> Trainer:
        loader = DataLoader(data, batch_size=2)
        config = TrainingConfig(max_steps=4, checkpoint_every=1, keep_checkpoints=5, progress=False)
        loss = lambda m, b: {"loss": (m(b[0]) - b[1]).pow(2).mean()}  # noqa: E731
        return Trainer(_model(), config, loader, loss, output_dir=tmp_path)

    trainer().train()
    root = tmp_path / ckpt.CHECKPOINTS_DIR
    # simulate a crash while step 4 was being written: its marker is missing, a tmp folder is left
    (root / ckpt.checkpoint_name(4) / ckpt.COMPLETE_MARKER).unlink()
    (root / (ckpt.checkpoint_name(5) + ckpt.TMP_SUFFIX)).mkdir()
    result = trainer().train()
    assert result.resumed_from_step == 3 and result.steps == 4
    assert ckpt.is_complete(root / ckpt.checkpoint_name(4))
    assert not list(root.glob("*.tmp"))


def test_rewriting_a_step_replaces_the_folder(tmp_path: Path) -> None:
    _write(tmp_path, 5)
    (tmp_path / ckpt.checkpoint_name(5) / "stale.txt").write_text("old")
    folder = _write(tmp_path, 5)
    assert not (folder / "stale.txt").exists() and ckpt.is_complete(folder)


def test_prune_keeps_the_newest_and_the_protected(tmp_path: Path) -> None:
    folders = [_write(tmp_path, step) for step in (1, 2, 3, 4)]
    removed = ckpt.prune(tmp_path, keep=2, protect={folders[0]})
    assert removed == [folders[1]]
    assert ckpt.complete_checkpoints(tmp_path) == [folders[0], folders[2], folders[3]]


def test_damaged_files_raise_checkpoint_errors(tmp_path: Path) -> None:
    folder = _write(tmp_path, 1)
    (folder / "optimizer.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=r"optimizer\.pt.*damaged"):
        ckpt.read_checkpoint(folder)
    other = torch.nn.Linear(3, 9)
    with pytest.raises(CheckpointError, match="another model"):
        ckpt.load_model(other, folder)
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        ckpt.read_checkpoint(tmp_path / "checkpoint-00000099")


def test_fingerprint_differences_list_each_changed_key(tmp_path: Path) -> None:
    saved = {"stage": "general_kd", "user.strategy": "kb8", "processes": 1}
    current = {"stage": "task_kd", "user.strategy": "kb8", "processes": 1, "user.extra": 2}
    lines = ckpt.fingerprint_differences(saved, current)
    assert len(lines) == 2
    assert "stage" in lines[0] and "general_kd" in lines[0] and "task_kd" in lines[0]
    assert "user.extra" in lines[1] and "<absent>" in lines[1]
    ckpt.check_fingerprint(tmp_path, saved, dict(saved))
    with pytest.raises(CheckpointError, match="different run"):
        ckpt.check_fingerprint(tmp_path, saved, current)
