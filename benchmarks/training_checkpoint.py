"""Cost of the Trainer's checkpoints on a real model: size on disk, write time, resume time, step time.

Trains the MiniLM-L6 teacher as a sequence classifier on synthetic token batches (the numbers do not
depend on the data) with :class:`compresskit.Trainer`, a checkpoint every ``--checkpoint-every`` steps,
and times every :func:`compresskit.checkpoint.write_checkpoint` call; then resumes the finished run in a
new Trainer and times reading the checkpoint back (model, optimizer, RNG states)::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/training_checkpoint.py --steps 6 --checkpoint-every 2 \\
        --batch-size 8 --seq-len 32 --threads 2 --name training_checkpoint_minilm_cpu

writes ``benchmarks/results/<name>.json`` and ``benchmarks/results/<name>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from compresskit import Trainer, TrainingConfig
from compresskit.plugin import checkpoint as ckpt
from compresskit.plugin import default_teacher_path

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--checkpoint-every", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16"])
    parser.add_argument("--name", default="training_checkpoint_minilm_cpu")
    return parser.parse_args(argv)


def synthetic_batches(n: int, batch_size: int, seq_len: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(n * batch_size):
        ids = torch.randint(1000, 30000, (seq_len,), generator=generator)
        rows.append({"input_ids": ids, "labels": torch.tensor(int(ids[0]) % 2)})
    return rows


def timed_writes() -> list[float]:
    """Replace ``write_checkpoint`` by a timed wrapper; return the list it fills with seconds."""
    seconds: list[float] = []
    original = ckpt.write_checkpoint

    def timed(root: Path, step: int, **kwargs: Any) -> Path:
        start = time.perf_counter()
        folder = original(root, step, **kwargs)
        seconds.append(time.perf_counter() - start)
        return folder

    ckpt.write_checkpoint = timed  # type: ignore[assignment]
    return seconds


def make_trainer(args: argparse.Namespace, output_dir: Path) -> Trainer:
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(default_teacher_path(), num_labels=2)
    rows = synthetic_batches(args.steps, args.batch_size, args.seq_len)
    loader = torch.utils.data.DataLoader(rows, batch_size=args.batch_size, shuffle=True)
    config = TrainingConfig(
        learning_rate=2e-5,
        max_steps=args.steps,
        checkpoint_every=args.checkpoint_every,
        mixed_precision=args.mixed_precision,
        log_every=1,
        progress=False,
    )
    return Trainer(model, config, loader, lambda m, b: {"loss": m(**b).loss}, output_dir=output_dir)


def folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.iterdir()) / 1e6


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    writes = timed_writes()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = make_trainer(args, Path(tmp)).train()
        train_seconds = time.perf_counter() - start
        final = result.final_checkpoint
        assert final is not None
        files = {f.name: round(f.stat().st_size / 1e6, 2) for f in sorted(final.iterdir())}
        size = folder_mb(final)
        trainer = make_trainer(args, Path(tmp))
        start = time.perf_counter()
        resumed = trainer.train()  # the run is complete: this only reads the checkpoint back
        resume_seconds = time.perf_counter() - start
    record = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "torch": torch.__version__,
            "threads": args.threads,
            "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg(),
            "platform": platform.platform(),
        },
        "settings": vars(args),
        "checkpoint_mb": round(size, 1),
        "checkpoint_files_mb": files,
        "checkpoint_writes": len(writes),
        "write_seconds_mean": round(sum(writes) / len(writes), 3),
        "resume_seconds": round(resume_seconds, 3),
        "resumed_from_step": resumed.resumed_from_step,
        "train_seconds_total": round(train_seconds, 2),
        "seconds_per_step_excluding_checkpoints": round((train_seconds - sum(writes)) / args.steps, 3),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    (RESULTS / f"{args.name}.md").write_text(markdown(record), encoding="utf-8")
    print(json.dumps(record, indent=2))
    return record


def markdown(record: dict[str, Any]) -> str:
    lines = [
        f"# Trainer checkpoints, MiniLM-L6 (`{record['command']}`)",
        "",
        "| checkpoint size (MB) | writes | mean write (s) | resume read (s) | s/step (no ckpt) |",
        "|---:|---:|---:|---:|---:|",
        f"| {record['checkpoint_mb']} | {record['checkpoint_writes']} | {record['write_seconds_mean']} | "
        f"{record['resume_seconds']} | {record['seconds_per_step_excluding_checkpoints']} |",
        "",
        f"Files (MB): {record['checkpoint_files_mb']}",
        "",
        f"Machine: {record['machine']}",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
