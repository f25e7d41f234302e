"""Checks run before any training: everything about a strategy that can be known in advance.

In order (each failure is a :class:`~compresskit.errors.CompressKitError` naming the config path, and
``file:line`` when the strategy was read from a file):

1. the schema (done when the strategy was built: unknown keys, types, finite numbers, limits, repeats
   and lengths > 0, the seed range) and a strategy with at least one step;
2. every component the strategy names, with its options, through the registry — training tables of
   fine-tuning and of every distiller stage included, and no stage with an empty ``losses`` table;
3. the teacher path (exists, holds a Transformer config transformers provides — no code from the
   folder is ever run — and safetensors weights that read back whole and finite), the fine-tuned
   teacher if given, the tokenizer;
4. every data split the run will read, read with the task's validating reader (:mod:`.preflight_data`);
5. a dry run of the steps on a shape-only copy of the model (:mod:`.preflight_plan`): each decompose
   step must replace at least one module and no replacement may grow its module; each distiller checks
   its requirements against the student those steps produce.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from compresskit.config import validate_components
from compresskit.config_lines import locate
from compresskit.distillation import FINETUNED
from compresskit.errors import CompressKitError, ConfigError
from compresskit.models import (
    auto_class,
    check_weight_files,
    is_finetuned_for,
    load_hf_config,
    load_tokenizer,
    resolve_model_path,
)
from compresskit.preflight_data import check_data
from compresskit.preflight_plan import dry_run_steps
from compresskit.registry import Registry
from compresskit.strategy import DistillStep, Strategy


@dataclass(frozen=True)
class Checked:
    """What preflight loaded and will hand to the pipeline (so nothing is loaded twice)."""

    task: Any
    tokenizer: Any
    pretrained_path: str
    teacher_is_finetuned: bool
    plans: tuple[Any, ...] = ()
    #: Each step resolved once (index → a decompose step's groups, a distill step's Distiller).
    steps: Mapping[int, Any] = field(default_factory=dict)
    #: Whether the run fine-tunes the teacher: it is not fine-tuned yet and a stage or the student uses it.
    finetunes_teacher: bool = True


def preflight(strategy: Strategy, registry: Registry) -> Checked:
    """Validate ``strategy`` completely without training; raise a CompressKitError on bad input.

    When the strategy was read from a file, every message names the ``file:line`` of the value (or the
    ``--set`` that wrote it).
    """
    try:
        return _preflight(strategy, registry)
    except CompressKitError as exc:
        located = locate(str(exc), strategy.source)
        if located == str(exc):
            raise
        raise _same_kind(exc, located) from None


def _same_kind(exc: CompressKitError, message: str) -> CompressKitError:
    try:
        return type(exc)(message)
    except TypeError:  # a subclass with another constructor: keep its exit status through the base
        return ConfigError(message)


def _preflight(strategy: Strategy, registry: Registry) -> Checked:
    if not strategy.steps:
        raise ConfigError(
            "steps: the strategy has no steps, so it would only fine-tune and evaluate the teacher. Add a "
            '[[steps]] table with kind = "decompose" (and usually one with kind = "distill").'
        )
    steps = validate_components(strategy, registry)
    task = registry.create("task", strategy.task.name, strategy.task.options, where="task.options")
    pretrained = resolve_model_path(strategy.model.teacher, "model.teacher")
    config = load_hf_config(pretrained, "model.teacher")
    check_weight_files(pretrained, "model.teacher")
    finetuned_given = strategy.model.finetuned_teacher
    if finetuned_given is not None:
        finetuned = resolve_model_path(finetuned_given, "model.finetuned_teacher")
        load_hf_config(finetuned, "model.finetuned_teacher")
        check_weight_files(finetuned, "model.finetuned_teacher")
    teacher_is_finetuned = finetuned_given is not None or is_finetuned_for(config, task)
    if strategy.model.student is not None:
        check_student_folder(strategy.model.student)
    tokenizer_source = strategy.model.tokenizer or pretrained
    tokenizer = load_tokenizer(
        tokenizer_source, "model.tokenizer" if strategy.model.tokenizer else "model.teacher"
    )
    check_lengths(strategy, config, tokenizer)
    finetunes = not teacher_is_finetuned and needs_finetuned_teacher(strategy, steps)
    check_data(strategy, registry, task, steps, needs_train=finetunes)
    plans = dry_run_steps(strategy, registry, meta_model(config, task), steps)
    return Checked(task, tokenizer, pretrained, teacher_is_finetuned, plans, steps, finetunes)


def check_lengths(strategy: Strategy, config: Any, tokenizer: Any) -> None:
    """Every sequence length the config sets fits the teacher's position table (else training would
    fail with a shape error after the teacher was fine-tuned). A task's own default length is not
    checked: short texts never reach it."""
    limits = [getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    usable = [int(n) for n in limits if isinstance(n, int) and 0 < n < 1_000_000]
    if not usable:
        return  # relative positions (e.g. T5): no fixed table
    most = min(usable)
    lengths = [("finetune.max_length", strategy.finetune.max_length)]
    lengths.append(("evaluation.max_length", strategy.evaluation.max_length))
    for index, step in enumerate(strategy.steps):
        for name, spec in getattr(step, "data", {}).items():
            if spec.task is None:
                lengths.append((f"steps[{index}].data.{name}.max_length", spec.max_length))
    for where, length in lengths:
        if length is not None and length > most:
            raise ConfigError(
                f"{where} is {length} but the teacher takes at most {most} tokens (max_position_embeddings "
                f"/ the tokenizer's model_max_length); set {where} = {most} or less."
            )


def needs_finetuned_teacher(strategy: Strategy, steps: Mapping[int, Any]) -> bool:
    """Whether anything of the run uses the fine-tuned teacher: a student initialised from it (or taking
    its head), or a distill stage that learns from it (general KD learns from the pre-trained one only).
    ``steps`` are the resolved steps (:func:`~compresskit.config.validate_components`)."""
    if strategy.model.student_init == "finetuned" or strategy.model.student is not None:
        return True
    distillers = [steps[i] for i, step in enumerate(strategy.steps) if isinstance(step, DistillStep)]
    return any(plan.teacher == FINETUNED for d in distillers for plan in d.stages())


def check_student_folder(folder: str) -> None:
    """``model.student`` must be a folder written by ``compresskit.save`` (or ``save_pretrained``)."""
    path = Path(folder).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"model.student: {folder!r} is not a saved model folder (no config.json there); give the "
            "'model' folder of a finished run or a folder written by compresskit.save."
        )


def meta_model(config: Any, task: Any) -> torch.nn.Module:
    """The architecture with the task head, on the ``meta`` device (shapes only, no memory)."""
    kwargs = dict(task.model_kwargs()) if hasattr(task, "model_kwargs") else {}
    for key, value in kwargs.items():
        setattr(config, key, value)
    with torch.device("meta"):
        return auto_class(task).from_config(config, trust_remote_code=False)
