"""``compresskit distill``: distil an already-decomposed student (saved with ``compresskit.save``).

Example::

    compresskit distill --student runs/kb21 --teacher runs/teacher-sst2 --pretrained default \\
        --task glue --task-option task=sst2 --distiller two_stage_kd \\
        --data stage1=text --data-option stage1:files='["wiki.txt"]' \\
        --options '{"stage1": {"training": {"num_epochs": 1}}}' --output runs/kb21-distilled

The teachers are Hugging Face folders (``--teacher``: fine-tuned on the task, ``--pretrained``: the
pre-trained model, ``default`` = MiniLM-L6); only those the distiller's stages learn from are loaded.
Each data name a stage reads comes from the train split of the task ``--data NAME=TASK`` names (its
options from ``--data-option NAME:KEY=VALUE``), else of ``--task``. The distilled student is saved
with ``compresskit.save`` in ``--output/model``; training state lives in ``--output/work`` so that
rerunning the same command resumes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from compresskit.commands import Command, CommandContext
from compresskit.distillation import FINETUNED, PRETRAINED, problem_type_of
from compresskit.errors import UsageError


def _options(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {}
    text = Path(raw[1:]).read_text(encoding="utf-8") if raw.startswith("@") else raw
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--options: not valid JSON ({exc}); pass a JSON object or @file.json.") from None
    if not isinstance(value, dict):
        raise UsageError("--options: expected a JSON object, e.g. '{\"skip_stage1\": true}'.")
    return value


class DistillCommand(Command):
    """Distil a decomposed student against a fine-tuned (and a pre-trained) teacher."""

    name = "distill"
    help = "knowledge-distil a decomposed student (compresskit.save folder) against teacher models"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from compresskit.commands.finetune import add_task_arguments

        parser.add_argument("--student", required=True, help="folder written by compresskit.save")
        parser.add_argument("--teacher", required=True, help="fine-tuned teacher folder")
        parser.add_argument("--pretrained", default="default", help="stage-1 teacher (default: MiniLM-L6)")
        parser.add_argument("--distiller", default="two_stage_kd", help="registered distiller name")
        parser.add_argument("--options", help="distiller options as JSON, or @file.json")
        add_task_arguments(parser)
        parser.add_argument(
            "--data",
            dest="data_tasks",
            action="append",
            default=[],
            metavar="NAME=TASK",
            help="data NAME (as a stage names it) reads the train split of task TASK, repeatable",
        )
        parser.add_argument(
            "--data-option",
            dest="data_options",
            action="append",
            default=[],
            metavar="NAME:KEY=VALUE",
            help="option of the task of data NAME in TOML syntax, repeatable",
        )
        parser.add_argument("--batch-size", type=int, default=32, help="batch size of every loader")
        parser.add_argument("--max-length", type=int, help="maximum tokens per example")
        parser.add_argument("--output", required=True, help="folder for the distilled student")
        parser.add_argument(
            "--seed", type=int, default=42, help="seed of everything random before training (default 42)"
        )

    def run(self, args: argparse.Namespace, context: CommandContext) -> int:
        from compresskit.run_lock import RunLock
        from compresskit.seeding import seeded
        from compresskit.signals import terminate_as_interrupt

        # one process per output folder; SIGTERM checkpoints and exits like Ctrl-C
        with terminate_as_interrupt(), RunLock(args.output), seeded(args.seed):
            result = distill_saved(args, context)  # projections and loaders are built before training seeds
        print(json.dumps(result, indent=2, default=str))
        return 0


def distill_saved(args: argparse.Namespace, context: CommandContext) -> dict[str, Any]:
    """Load the models, build the loaders the distiller's stages name, distil, save the student."""
    from compresskit.commands.finetune import create_task
    from compresskit.models import load_task_model, load_tokenizer, resolve_model_path
    from compresskit.saving import is_compressed_folder, load, save

    registry = context.registry
    distiller = registry.create("distiller", args.distiller, _options(args.options), where="--options")
    task = create_task(registry, args.task, args.task_options)
    sources = _data_tasks(args.data_tasks, args.data_options)
    teacher_path = resolve_model_path(args.teacher, where="--teacher")
    tokenizer = load_tokenizer(teacher_path, where="--teacher")  # checked before any model is loaded
    if is_compressed_folder(args.student):
        student = load(args.student, registry=registry)
    else:  # a plain (e.g. smaller dense) student
        student = load_task_model(
            resolve_model_path(args.student, where="--student"), task, where="--student"
        )
    plans = distiller.stages(problem_type_of(student))
    unknown = sorted(set(sources) - {plan.data for plan in plans})
    if unknown:
        names = ", ".join(sorted({plan.data for plan in plans}))
        raise UsageError(
            f"--data: the stages of {args.distiller!r} read no data named {unknown[0]!r} ({names})."
        )
    teachers = {name: _teacher(name, args, teacher_path, task) for name in {plan.teacher for plan in plans}}
    data: dict[str, Any] = {}
    for plan in plans:
        source = task
        if plan.data in sources:
            name, pairs = sources[plan.data]
            source = create_task(registry, name, pairs)
        data[plan.data] = source.dataloader(
            "train",
            tokenizer,
            batch_size=args.batch_size,
            shuffle=True,
            max_length=args.max_length,
            group_by_length=True,
        )

    def evaluate(model: Any) -> dict[str, float]:
        metrics = task.evaluate(model, tokenizer, "dev", max_length=args.max_length)
        return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}

    output = Path(args.output)
    result = distiller.distill(
        student,
        teachers,
        data,
        output_dir=output / "work",
        evaluate=evaluate,
        registry=registry,
        defaults={"seed": args.seed},
    )
    save(student, output / "model", tokenizer=tokenizer)
    return {"model": str(output / "model"), "result": result, "dev": evaluate(student)}


def _teacher(name: str, args: argparse.Namespace, teacher_path: str, task: Any) -> Any:
    """The teacher a stage names: the fine-tuned one (``--teacher``) or the pre-trained one (``--pretrained``,
    headless)."""
    from compresskit.models import load_task_model, pretrained, resolve_model_path

    if name == FINETUNED:
        return load_task_model(teacher_path, task, where="--teacher")
    if name == PRETRAINED:
        from transformers import AutoModel

        return pretrained(
            AutoModel, resolve_model_path(args.pretrained, where="--pretrained"), "--pretrained"
        )
    raise UsageError(
        f"--distiller {args.distiller}: a stage learns from a teacher named {name!r}; this command gives "
        f"{FINETUNED!r} (--teacher) and {PRETRAINED!r} (--pretrained)."
    )


def _data_tasks(data: list[str], options: list[str]) -> dict[str, tuple[str, list[str]]]:
    """``--data NAME=TASK`` and ``--data-option NAME:KEY=VALUE`` → data name → (task, option pairs)."""
    sources: dict[str, tuple[str, list[str]]] = {}
    for text in data:
        name, sep, task = text.partition("=")
        if not sep or not name.strip() or not task.strip():
            raise UsageError(f"--data {text!r}: expected NAME=TASK, e.g. --data stage1=text.")
        sources[name.strip()] = (task.strip(), [])
    for text in options:
        name, sep, pair = text.partition(":")
        if not sep or name.strip() not in sources:
            raise UsageError(
                f"--data-option {text!r}: expected NAME:KEY=VALUE with a NAME given by --data "
                f"({', '.join(sorted(sources)) or 'none given'})."
            )
        sources[name.strip()][1].append(pair)
    return sources
