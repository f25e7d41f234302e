"""A tiny, fully seeded training run used by the resume and multi-process tests.

Imported by the tests (``build_run``) and run as a script (``python tiny_training.py OUT_DIR``, also
under ``accelerate launch``). Environment variables steer the script:

* ``TINY_KILL_AT_CALL=N``: SIGKILL this process inside the N-th call of ``compute_loss``;
* ``TINY_ACCUM``, ``TINY_BATCH``, ``TINY_DROPOUT``, ``TINY_EPOCHS``, ``TINY_CKPT_EVERY``: settings;
* the script writes ``OUT_DIR/result-rank{R}.json`` (rank, world size, checkpoint writes, result) and
  ``OUT_DIR/weights-rank{R}.pt`` (final state dict).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from compresskit import checkpoint as ckpt
from compresskit.training import Trainer, TrainingConfig

N_EXAMPLES = 40


class TinyNet(torch.nn.Module):
    """A 2-layer MLP with dropout (so RNG state matters) and a classification head."""

    def __init__(self, dropout: float = 0.2) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(8, 16)
        self.norm = torch.nn.LayerNorm(16)
        self.dropout = torch.nn.Dropout(dropout)
        self.head = torch.nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(torch.relu(self.norm(self.hidden(x)))))


def dataset() -> TensorDataset:
    generator = torch.Generator().manual_seed(1234)
    x = torch.randn(N_EXAMPLES, 8, generator=generator)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    return TensorDataset(x, y)


def compute_loss(model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
    x, y = batch
    logits = model(x)
    ce = torch.nn.functional.cross_entropy(logits, y)
    l2 = 1e-3 * logits.pow(2).mean()
    return {"loss": ce + l2, "ce": ce, "l2": l2}


def build_run(
    output_dir: Path,
    *,
    accum: int = 2,
    batch: int = 4,
    dropout: float = 0.2,
    epochs: float = 3.0,
    checkpoint_every: int | None = 3,
    compute: Any = compute_loss,
    **overrides: Any,
) -> tuple[Trainer, TinyNet]:
    """A Trainer over :class:`TinyNet` and the seeded synthetic data (shuffled loader)."""
    torch.manual_seed(0)
    model = TinyNet(dropout)
    data = dataset()
    loader = DataLoader(data, batch_size=batch, shuffle=True)
    settings: dict[str, Any] = {
        "learning_rate": 1e-2,
        "num_epochs": epochs,
        "gradient_accumulation_steps": accum,
        "max_grad_norm": 0.5,
        "warmup_ratio": 0.2,
        "checkpoint_every": checkpoint_every,
        "log_every": 2,
        "progress": False,
        "keep_checkpoints": 2,
        "cpu": True,  # bitwise comparisons are made on the CPU, even where a GPU exists
    }
    settings.update(overrides)
    trainer = Trainer(
        model,
        TrainingConfig(**settings),
        loader,
        compute,
        output_dir=output_dir,
        fingerprint={"script": "tiny_training"},
    )
    return trainer, model


def _killing(after_calls: int) -> Any:
    calls = 0

    def compute(model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        nonlocal calls
        calls += 1
        if calls == after_calls:
            os.kill(os.getpid(), signal.SIGKILL)
        return compute_loss(model, batch)

    return compute


def _count_checkpoint_writes() -> list[int]:
    """Wrap ``write_checkpoint`` so that the run records which steps this rank wrote."""
    writes: list[int] = []
    original = ckpt.write_checkpoint

    def recording(root: Path, step: int, **kwargs: Any) -> Path:
        writes.append(step)
        return original(root, step, **kwargs)

    ckpt.write_checkpoint = recording  # type: ignore[assignment]
    return writes


def main(out: Path) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    writes = _count_checkpoint_writes()
    kill_at = int(os.environ.get("TINY_KILL_AT_CALL", "0"))
    trainer, model = build_run(
        out,
        accum=int(os.environ.get("TINY_ACCUM", "2")),
        batch=int(os.environ.get("TINY_BATCH", "4")),
        dropout=float(os.environ.get("TINY_DROPOUT", "0.2")),
        epochs=float(os.environ.get("TINY_EPOCHS", "3")),
        checkpoint_every=int(os.environ.get("TINY_CKPT_EVERY", "3")),
        compute=_killing(kill_at) if kill_at else compute_loss,
    )
    result = trainer.train()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    torch.save(model.state_dict(), out / f"weights-rank{rank}.pt")
    report = {"rank": rank, "world": world, "writes": writes, "result": result.to_dict()}
    (out / f"result-rank{rank}.json").write_text(json.dumps(report), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
