"""One distillation stage: options, validation and a run of :class:`compresskit.training.Trainer`.

Each stage trains in its own folder (``output_dir/<stage>``) with a fingerprint naming the distiller,
the stage, its losses, mapping and teacher, so an interrupted run resumes inside the stage it was in,
and a checkpoint of another strategy or model is refused instead of silently loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from compresskit.component import parse_options
from compresskit.errors import ConfigError, did_you_mean
from compresskit.registry import Registry
from compresskit.training import Trainer, TrainingConfig

from .common import (
    DistillationModel,
    build_losses,
    make_compute_loss,
    make_projection,
    model_fingerprint,
    plan_losses,
)


@dataclass(frozen=True)
class StageOptions:
    """Options of one stage (a ``[steps.options.stage1]`` table, or a single-stage distiller's options).

    ``losses`` maps loss names to a weight or to a table of that loss's options (``None``: the
    distiller's defaults for the student's problem type, e.g. logit MSE instead of a softmax-based logit
    loss for a regression head); ``teacher`` and
    ``data`` name entries of the ``teachers`` and ``data`` mappings given to ``distill``; ``mapping`` is
    ``"auto"`` (one-to-one for equal depths, else uniform), ``"one_to_one"``, ``"uniform"`` or a list;
    ``training`` holds :class:`compresskit.training.TrainingConfig` fields.
    """

    losses: dict[str, Any] | None = None
    teacher: str = "finetuned"
    data: str = "train"
    training: dict[str, Any] = field(default_factory=dict)
    mapping: str | tuple[Any, ...] = "auto"
    cache_teacher_outputs: bool = False
    primary_metric: str | None = None
    greater_is_better: bool = True


def parse_stage(values: Mapping[str, Any], defaults: StageOptions, where: str) -> StageOptions:
    """``defaults`` updated by ``values`` (validated; ``losses`` replaces the default set as a whole)."""
    merged = {**dataclasses.asdict(defaults), **dict(values)}
    return parse_options(StageOptions, merged, where)


def with_default_losses(stage: StageOptions, defaults: Mapping[str, Any]) -> StageOptions:
    """``stage`` with ``defaults`` as its losses when it names none (``losses`` is ``None``)."""
    return stage if stage.losses is not None else dataclasses.replace(stage, losses=dict(defaults))


def training_config(stage: StageOptions, where: str) -> TrainingConfig:
    """The stage's :class:`TrainingConfig`; an unknown field is a :class:`ConfigError` with did-you-mean."""
    return parse_options(TrainingConfig, dict(stage.training), f"{where}.training")


def pick(mapping: Mapping[str, Any], key: str, what: str, where: str) -> Any:
    """``mapping[key]`` or a :class:`ConfigError` listing what was given."""
    if key not in mapping:
        given = ", ".join(sorted(mapping)) or "none"
        raise ConfigError(
            f"{where}.{what}: no {what} named {key!r} was given to distill().{did_you_mean(key, mapping)} "
            f"Given: {given}."
        )
    return mapping[key]


def check_stage(
    *,
    stage: StageOptions,
    student: nn.Module,
    teachers: Mapping[str, nn.Module],
    registry: Registry,
    where: str,
) -> None:
    """What :func:`run_stage` checks before training, on shape-only models (``where``: config path)."""
    teacher = pick(teachers, stage.teacher, "teacher", where)
    training_config(stage, where)
    losses = build_losses(registry, stage.losses or {}, f"{where}.losses")
    plan_losses(student, teacher, losses, stage.mapping, cache=False, where=where).restore()


def run_stage(
    *,
    name: str,
    distiller: str,
    stage: StageOptions,
    student: nn.Module,
    teachers: Mapping[str, nn.Module],
    data: Mapping[str, Any],
    output_dir: Path,
    evaluate: Callable[[nn.Module], Mapping[str, float]] | None,
    tracker: Any,
    registry: Registry,
) -> dict[str, Any]:
    """Train ``student`` for one stage and return the Trainer's result as a dict."""
    where = f"{distiller}.{name}"
    teacher = pick(teachers, stage.teacher, "teacher", where)
    loader = pick(data, stage.data, "data", where)
    config = training_config(stage, where)
    losses = build_losses(registry, stage.losses or {}, f"{where}.losses")
    cache = stage.cache_teacher_outputs
    plan = plan_losses(student, teacher, losses, stage.mapping, cache=cache, where=where)
    try:
        wrapper = DistillationModel(student, make_projection(student, teacher, plan))
        trainer = Trainer(
            wrapper,
            config,
            loader,
            make_compute_loss(plan),
            output_dir=output_dir / name,
            evaluate=(lambda model: evaluate(getattr(model, "student", model))) if evaluate else None,
            primary_metric=stage.primary_metric if evaluate else None,
            greater_is_better=stage.greater_is_better,
            tracker=tracker,
            stage=name,
            fingerprint=_fingerprint(distiller, name, stage, teacher, plan.mapping.pairs),
            frozen_modules=(teacher,),
        )
        result = trainer.train().to_dict()
    finally:
        plan.restore()
    if plan.cache is not None:
        result["teacher_cache"] = dict(plan.stats)
    return result


def _fingerprint(
    distiller: str, name: str, stage: StageOptions, teacher: nn.Module, pairs: Any
) -> dict[str, Any]:
    return {
        "distiller": distiller,
        "stage": name,
        "losses": dict(stage.losses or {}),
        "mapping": [list(p) for p in pairs],
        "teacher": model_fingerprint(teacher),
    }
