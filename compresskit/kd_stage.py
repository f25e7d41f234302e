"""One distillation stage (a :class:`~compresskit.distillation.StagePlan`): validation and a run of
:class:`compresskit.training.Trainer` on the KD engine (:mod:`compresskit.kd_engine`).

Each stage trains in its own folder (``output_dir/<stage>``) with a fingerprint naming the distiller,
the stage, its losses, mapping and teacher, so an interrupted run resumes inside the stage it was in,
and a checkpoint of another strategy or model is refused instead of silently loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from compresskit.component import parse_options
from compresskit.distillation import StageOptions, StagePlan
from compresskit.errors import ConfigError, did_you_mean
from compresskit.kd_engine import (
    DistillationModel,
    build_losses,
    make_compute_loss,
    make_projection,
    model_fingerprint,
    plan_losses,
)
from compresskit.registry import Registry
from compresskit.training import Trainer, TrainingConfig


def parse_stage(values: Mapping[str, Any], defaults: StageOptions, where: str) -> StageOptions:
    """``defaults`` updated by ``values`` (validated; ``losses`` replaces the default set as a whole)."""
    merged = {**dataclasses.asdict(defaults), **dict(values)}
    return parse_options(StageOptions, merged, where)


def with_default_losses(stage: StageOptions, defaults: Mapping[str, Any]) -> StageOptions:
    """``stage`` with ``defaults`` as its losses when it names none (``losses`` is ``None``)."""
    return stage if stage.losses is not None else dataclasses.replace(stage, losses=dict(defaults))


def training_config(
    stage: StageOptions, where: str, defaults: Mapping[str, Any] | None = None
) -> TrainingConfig:
    """The stage's :class:`TrainingConfig` over the run's ``defaults``; an unknown field is a
    :class:`ConfigError` with did-you-mean."""
    return parse_options(
        TrainingConfig, {**dict(defaults or {}), **dict(stage.training)}, f"{where}.training"
    )


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
    plan: StagePlan,
    *,
    student: nn.Module,
    teachers: Mapping[str, nn.Module],
    registry: Registry,
    where: str,
) -> None:
    """What :func:`run_stage` checks before training, on shape-only models (``where``: the stage's config
    path). Raises :class:`ConfigError` for a missing teacher, a bad training field, an unknown loss or
    a loss the models cannot feed."""
    stage = plan.options
    teacher = pick(teachers, stage.teacher, "teacher", where)
    training_config(stage, where)
    losses = build_losses(registry, stage.losses or {}, f"{where}.losses")
    plan_losses(student, teacher, losses, stage.mapping, cache=False, where=where).restore()


def run_stage(
    plan: StagePlan,
    *,
    distiller: str,
    student: nn.Module,
    teachers: Mapping[str, nn.Module],
    data: Mapping[str, Any],
    output_dir: Path,
    evaluate: Callable[[nn.Module], Mapping[str, float]] | None,
    tracker: Any,
    registry: Registry,
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``student`` in place for one stage and return the Trainer's result as a dict.

    The stage reads ``data[plan.data]`` and learns from ``teachers[plan.teacher]``; ``defaults`` are
    :class:`TrainingConfig` fields of the run (seed, progress, cpu) under the stage's own ``training``
    table. Trains in ``output_dir/<plan.name>`` and resumes from its checkpoints.
    """
    name, stage = plan.name, plan.options
    where = f"{distiller}.{name}"
    teacher = pick(teachers, stage.teacher, "teacher", where)
    loader = pick(data, stage.data, "data", where)
    config = training_config(stage, where, defaults)
    losses = build_losses(registry, stage.losses or {}, f"{where}.losses")
    cache = stage.cache_teacher_outputs
    loss_plan = plan_losses(student, teacher, losses, stage.mapping, cache=cache, where=where)
    try:
        wrapper = DistillationModel(student, make_projection(student, teacher, loss_plan))
        trainer = Trainer(
            wrapper,
            config,
            loader,
            make_compute_loss(loss_plan),
            output_dir=output_dir / name,
            evaluate=(lambda model: evaluate(getattr(model, "student", model))) if evaluate else None,
            primary_metric=stage.primary_metric if evaluate else None,
            greater_is_better=stage.greater_is_better,
            tracker=tracker,
            stage=name,
            fingerprint=_fingerprint(distiller, name, stage, teacher, loss_plan.mapping.pairs),
            frozen_modules=(teacher,),
        )
        result = trainer.train().to_dict()
    finally:
        loss_plan.restore()
    if loss_plan.cache is not None:
        result["teacher_cache"] = dict(loss_plan.stats)
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
