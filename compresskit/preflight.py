"""Checks run before any training: everything about a strategy that can be known in advance.

In order: component names and options (through the registry), the teacher path (exists, holds a
Transformer config), the fine-tuned teacher if given, the tokenizer, the task's data files, and a
dry-run plan of every decompose step on the real architecture (built on the ``meta`` device, so no
weights are loaded) — "a strategy that cannot be applied to this architecture" fails here.

Each decompose step is planned on the dense architecture. A later step that targets modules an
earlier step already replaced is only checked when it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from compresskit.config import step_as_mapping, validate_components
from compresskit.errors import CompressKitError, ConfigError, DataError
from compresskit.models import (
    auto_class,
    is_finetuned_for,
    load_hf_config,
    load_tokenizer,
    resolve_model_path,
)
from compresskit.registry import Registry
from compresskit.strategy import DecomposeStep, Strategy


@dataclass(frozen=True)
class Checked:
    """What preflight loaded and will hand to the pipeline (so nothing is loaded twice)."""

    task: Any
    tokenizer: Any
    pretrained_path: str
    teacher_is_finetuned: bool
    plans: tuple[Any, ...] = ()


def preflight(strategy: Strategy, registry: Registry) -> Checked:
    """Validate ``strategy`` completely without training; raise a CompressKitError on bad input."""
    validate_components(strategy, registry)
    task = registry.create("task", strategy.task.name, strategy.task.options, where="task.options")
    pretrained = resolve_model_path(strategy.model.teacher, "model.teacher")
    config = load_hf_config(pretrained, "model.teacher")
    finetuned_given = strategy.model.finetuned_teacher
    if finetuned_given is not None:
        finetuned = resolve_model_path(finetuned_given, "model.finetuned_teacher")
        load_hf_config(finetuned, "model.finetuned_teacher")
    teacher_is_finetuned = finetuned_given is not None or is_finetuned_for(config, task)
    if strategy.model.student is not None:
        check_student_folder(strategy.model.student)
    tokenizer_source = strategy.model.tokenizer or pretrained
    tokenizer = load_tokenizer(
        tokenizer_source, "model.tokenizer" if strategy.model.tokenizer else "model.teacher"
    )
    check_task_files(task, strategy, needs_train=not teacher_is_finetuned)
    plans = plan_steps(strategy, registry, config, task)
    return Checked(task, tokenizer, pretrained, teacher_is_finetuned, plans)


def check_student_folder(folder: str) -> None:
    """``model.student`` must be a folder written by ``compresskit.save`` (or ``save_pretrained``)."""
    path = Path(folder).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"model.student: {folder!r} is not a saved model folder (no config.json there); give the "
            "'model' folder of a finished run or a folder written by compresskit.save."
        )


def check_task_files(task: Any, strategy: Strategy, *, needs_train: bool) -> None:
    """The evaluation split (and the train split when the teacher must be fine-tuned) must be readable."""
    split = strategy.evaluation.split
    if split not in task.splits():
        raise ConfigError(
            f"evaluation.split: {split!r} is not a split of task {task.name!r} ({task.splits()})."
        )
    wanted = [split, "train"] if needs_train and "train" in task.splits() else [split]
    for name in wanted:
        data_path = getattr(task, "data_path", None)
        if callable(data_path):
            path = Path(data_path(name))
            if not path.is_file():
                raise DataError(
                    f"task {task.name!r}: the {name} file {path} does not exist; set task.options.data_dir "
                    "to the folder holding the task's files."
                )
        else:
            task.load_split(name)


def meta_model(config: Any, task: Any) -> torch.nn.Module:
    """The architecture with the task head, on the ``meta`` device (shapes only, no memory)."""
    kwargs = dict(task.model_kwargs()) if hasattr(task, "model_kwargs") else {}
    for key, value in kwargs.items():
        setattr(config, key, value)
    with torch.device("meta"):
        return auto_class(task).from_config(config)


def plan_steps(strategy: Strategy, registry: Registry, config: Any, task: Any) -> tuple[Any, ...]:
    """Dry-run plan of every decompose step on the dense architecture."""
    steps = [(i, s) for i, s in enumerate(strategy.steps) if isinstance(s, DecomposeStep)]
    if not steps:
        return ()
    from compresskit.walker import plan_compression

    model = meta_model(config, task)
    plans = []
    for index, step in steps:
        try:
            plans.append(plan_compression(model, step_as_mapping(step), registry=registry))
        except CompressKitError as exc:
            raise type(exc)(f"steps[{index}] cannot be applied to {type(model).__name__}: {exc}") from None
    return tuple(plans)
