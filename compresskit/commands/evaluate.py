"""``compresskit evaluate``: the official metrics of a saved model on a task split.

Example::

    compresskit evaluate --model runs/teacher-sst2 --task glue --task-option task=sst2 [--json]
    compresskit evaluate --task squad --predictions predictions.json     # score a prediction file

The model folder may hold a plain Hugging Face model or a compressed one saved by compresskit.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from compresskit.commands import Command, CommandContext
from compresskit.commands.finetune import add_task_arguments, create_task
from compresskit.errors import ConfigError
from compresskit.report_table import format_table


class EvaluateCommand(Command):
    """Evaluate a saved model (or a prediction file) on a task's split with its official metrics."""

    name = "evaluate"
    help = "print the official metrics of a saved model on a task split (JSON with --json)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--model", help="saved model folder (plain Hugging Face or compresskit), or 'default'"
        )
        add_task_arguments(parser)
        parser.add_argument("--tokenizer", help="tokenizer folder or Hub id (default: the model folder's)")
        parser.add_argument("--split", default="dev", help="split to evaluate (default: dev)")
        parser.add_argument("--batch-size", type=int, default=64, help="evaluation batch size (default 64)")
        parser.add_argument("--max-length", type=int, help="maximum tokens per example (default: task's)")
        parser.add_argument("--limit", type=int, help="evaluate on the first N examples only")
        parser.add_argument("--predictions", help="score this prediction file instead of a model (SQuAD)")
        parser.add_argument("--json", action="store_true", help="print the metrics as JSON")

    def run(self, args: argparse.Namespace, context: CommandContext) -> int:
        task = create_task(context.registry, args.task, args.task_options)
        if args.predictions:
            if not hasattr(task, "score_prediction_file"):
                raise ConfigError(f"--predictions: task {args.task!r} cannot score prediction files.")
            metrics: dict[str, Any] = task.score_prediction_file(args.predictions, args.split)
        elif args.model:
            metrics = evaluate_folder(args.model, task, args)
        else:
            raise ConfigError("evaluate needs --model FOLDER (or --predictions FILE for SQuAD).")
        if args.json:
            print(json.dumps(metrics, indent=2))
        else:
            rows = [[k, _cell(v)] for k, v in metrics.items()]
            print(format_table(["metric", "value"], rows))
        return 0


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list):  # e.g. SQuAD missing_ids: the count and the first few (all in --json)
        return f"{len(value)}" + (f" (e.g. {', '.join(map(str, value[:3]))})" if value else "")
    return str(value)


def _saved_head(path: Any) -> Any:
    """A stand-in with the folder's config when it holds a classification head, else ``None``."""
    from types import SimpleNamespace

    from compresskit.models import load_hf_config

    config = load_hf_config(str(path), where="--model")
    names = getattr(config, "architectures", None) or []
    heads = [name for name in names if name.endswith("ForSequenceClassification")]
    return SimpleNamespace(config=config) if heads else None


def evaluate_folder(model: str, task: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Load ``model`` (plain or compressed folder) with ``task``'s head and evaluate it."""
    from compresskit.models import check_head_fits, load_task_model, load_tokenizer, resolve_model_path
    from compresskit.saving import is_compressed_folder, load

    path = resolve_model_path(model, where="--model")
    task.check_split(args.split)
    tokenizer_source = args.tokenizer or path
    tokenizer = load_tokenizer(tokenizer_source, where="--tokenizer" if args.tokenizer else "--model")

    if is_compressed_folder(path):
        loaded = load(path)
    else:  # a head of the wrong size would be replaced by a random one: check the saved one first
        check_head_fits(_saved_head(path), task, where="--model")
        loaded = load_task_model(path, task, where="--model")
    check_head_fits(loaded, task, where="--model")
    return dict(
        task.evaluate(loaded, tokenizer, args.split, batch_size=args.batch_size, max_length=args.max_length,
                      limit=args.limit)
    )  # fmt: skip
