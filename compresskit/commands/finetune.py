"""``compresskit finetune``: fine-tune a pre-trained checkpoint on a task (the teacher of stage 2).

Example::

    compresskit finetune --model default --task glue --task-option task=sst2 \\
        --task-option train_limit=2000 --output runs/teacher-sst2 --epochs 1 --lr 5e-5

The model gets the head the task asks for (``task.model_kwargs()``), is trained with the shared
:class:`compresskit.training.Trainer` on the task's loss (cross-entropy, MSE for regression, span
cross-entropy for QA), evaluated on the dev split, and saved with ``save_pretrained`` together with its
tokenizer and a ``finetune_metrics.json``. Rerunning with the same ``--output`` resumes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compresskit.commands import Command, CommandContext
from compresskit.errors import UsageError
from compresskit.registry import Registry

METRICS_FILE = "finetune_metrics.json"


def parse_task_options(pairs: Iterable[str]) -> dict[str, Any]:
    """``["task=sst2", "train_limit=200"]`` → ``{"task": "sst2", "train_limit": 200}``.

    Values use TOML syntax (``200``, ``0.5``, ``true``, ``["a.txt", "b.txt"]``, ``"quoted"``); a value
    that is not valid TOML is taken as a plain string.
    """
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--task-option {pair!r}: expected KEY=VALUE, e.g. --task-option task=sst2.")
        try:
            options[key] = tomllib.loads(f"value = {raw.strip()}")["value"]
        except tomllib.TOMLDecodeError:
            options[key] = raw.strip()
    return options


def add_task_arguments(parser: argparse.ArgumentParser) -> None:
    """``--task NAME`` and repeatable ``--task-option KEY=VALUE`` (shared by finetune and evaluate)."""
    parser.add_argument("--task", default="glue", help="registered task name (default: glue)")
    parser.add_argument(
        "--task-option",
        dest="task_options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="task option in TOML syntax, repeatable, e.g. --task-option task=sst2",
    )


def create_task(registry: Registry, name: str, pairs: Iterable[str]) -> Any:
    """Instantiate task ``name`` with the parsed ``--task-option`` pairs."""
    return registry.create("task", name, parse_task_options(pairs), where=f"--task {name} --task-option")


@dataclass(frozen=True)
class FinetuneResult:
    """What :func:`finetune` produced."""

    output_dir: Path
    metrics: dict[str, float]
    steps: int

    def to_dict(self) -> dict[str, Any]:
        return {"output_dir": str(self.output_dir), "metrics": self.metrics, "steps": self.steps}


def finetune(
    model_path: str,
    task: Any,
    output_dir: str | Path,
    config: Any,
    *,
    max_length: int | None = None,
    eval_split: str = "dev",
    eval_limit: int | None = None,
    tracker: Any = None,
    keep_checkpoints: bool = False,
) -> FinetuneResult:
    """Fine-tune ``model_path`` (a folder, Hub id or ``"default"``) on ``task``; save it in ``output_dir``.

    Training checkpoints go to ``output_dir/work`` (an interrupted run resumes from them) and are
    deleted once the model is saved, unless ``keep_checkpoints``. Everything random (the new task head,
    dropout, the data order) derives from ``config.seed``: the same arguments give the same model.
    """
    from compresskit.run_lock import RunLock
    from compresskit.seeding import seeded
    from compresskit.signals import terminate_as_interrupt

    # one process per output folder; SIGTERM checkpoints and exits like Ctrl-C
    with terminate_as_interrupt(), RunLock(output_dir), seeded(config.seed):
        return _finetune(
            model_path, task, output_dir, config, max_length=max_length, eval_split=eval_split,
            eval_limit=eval_limit, tracker=tracker, keep_checkpoints=keep_checkpoints,
        )  # fmt: skip


def _finetune(
    model_path: str,
    task: Any,
    output_dir: str | Path,
    config: Any,
    *,
    max_length: int | None,
    eval_split: str,
    eval_limit: int | None,
    tracker: Any,
    keep_checkpoints: bool,
) -> FinetuneResult:
    from compresskit.checkpoint import load_model
    from compresskit.models import load_task_model, load_tokenizer, resolve_model_path
    from compresskit.stages import task_loss
    from compresskit.training import Trainer

    output = Path(output_dir)
    path = resolve_model_path(model_path, where="--model")
    tokenizer = load_tokenizer(path, where="--model")
    model = load_task_model(path, task, where="--model")
    loader = task.dataloader(
        "train",
        tokenizer,
        batch_size=config.batch_size,
        shuffle=True,
        seed=config.seed,
        max_length=max_length,
        group_by_length=True,
    )

    def evaluate(trained: Any) -> dict[str, float]:
        metrics = task.evaluate(trained, tokenizer, eval_split, max_length=max_length, limit=eval_limit)
        return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}

    result = Trainer(
        model, config, loader, task_loss, output_dir=output / "work", evaluate=evaluate,
        primary_metric=task.primary_metric, greater_is_better=task.greater_is_better, tracker=tracker,
        stage="finetune", fingerprint={"model": path, "task": task.describe(), "max_length": max_length},
    ).train()  # fmt: skip
    metrics = dict(result.final_metrics)
    if result.best_checkpoint is not None and metrics.get(task.primary_metric) != result.best_metric:
        load_model(model, result.best_checkpoint)  # keep the best evaluated weights, not the last
        metrics = evaluate(model)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    summary = FinetuneResult(output, metrics, result.steps)
    (output / METRICS_FILE).write_text(json.dumps(summary.to_dict() | {"task": task.describe()}, indent=2))
    if not keep_checkpoints:
        shutil.rmtree(output / "work", ignore_errors=True)
    return summary


class FinetuneCommand(Command):
    """Fine-tune a pre-trained model on a task and save it (model + tokenizer) for distillation."""

    name = "finetune"
    help = "fine-tune a pre-trained checkpoint on a task (e.g. GLUE SST-2) and save it as a teacher"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--model", default="default", help="model folder, Hub id or 'default' (MiniLM-L6)"
        )
        add_task_arguments(parser)
        parser.add_argument("--output", required=True, help="folder to save the fine-tuned model in")
        parser.add_argument("--epochs", type=float, default=3.0, help="training epochs (default 3)")
        parser.add_argument("--max-steps", type=int, help="optimizer steps (wins over --epochs)")
        parser.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (default 5e-5)")
        parser.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
        parser.add_argument("--max-length", type=int, help="maximum tokens per example (default: task's)")
        parser.add_argument("--eval-every", type=int, help="evaluate (and keep the best) every N steps")
        parser.add_argument(
            "--checkpoint-every",
            type=int,
            default=500,
            help="write a resumable checkpoint every N optimizer steps (default 500)",
        )
        parser.add_argument("--eval-limit", type=int, help="evaluate on the first N dev examples only")
        parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
        parser.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no")
        parser.add_argument("--tracker", default="none", help="tracker name, e.g. mlflow (default: none)")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
        parser.add_argument("--keep-checkpoints", action="store_true", help="keep the training checkpoints")
        parser.add_argument("--json", action="store_true", help="print the result as JSON")

    def run(self, args: argparse.Namespace, context: CommandContext) -> int:
        from compresskit.training import TrainingConfig

        task = create_task(context.registry, args.task, args.task_options)
        config = TrainingConfig(
            learning_rate=args.lr, num_epochs=args.epochs, max_steps=args.max_steps,
            batch_size=args.batch_size, eval_every=args.eval_every, seed=args.seed,
            checkpoint_every=args.checkpoint_every,
            mixed_precision=args.mixed_precision, progress=not args.no_progress,
        )  # fmt: skip
        tracker = context.registry.create("tracker", args.tracker, where="--tracker")
        tracker.start_run(f"finetune-{args.task}", tags={"stage": "finetune"})
        status = "FAILED"
        try:
            tracker.log_params({"model": args.model, **_flat(task.describe(), "task"), **config.to_dict()})
            result = finetune(
                args.model, task, args.output, config, max_length=args.max_length, eval_limit=args.eval_limit,
                tracker=tracker, keep_checkpoints=args.keep_checkpoints,
            )  # fmt: skip
            tracker.log_metrics({f"finetune/final/{k}": v for k, v in result.metrics.items()})
            status = "FINISHED"
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (compresskit.errors.Terminated)
            status = "KILLED"
            raise
        finally:
            tracker.end_run(status)
        print(json.dumps(result.to_dict(), indent=2) if args.json else _describe(result))
        return 0


def _flat(values: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {f"{prefix}.{k}": v for k, v in values.items()}


def _describe(result: FinetuneResult) -> str:
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
    return f"fine-tuned model saved in {result.output_dir} after {result.steps} steps; dev: {metrics}"
