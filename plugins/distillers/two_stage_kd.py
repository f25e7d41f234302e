"""``two_stage_kd``: KroneckerBERT's two-stage knowledge distillation (Tahaei et al. 2022, §3.5).

Stage 1 (KD at pre-training): the student — initialised by the decomposition from the teacher's
weights — learns from the *pre-trained* teacher on general text with
L = L_Embedding + L_Attention + L_FFN (Eq. 14 without the logit and label terms; MLM optional).
Stage 2 (task KD): the prediction head (and pooler) are copied from the *fine-tuned* teacher (§3.7), then
the student learns from that teacher on the task data with L = L_Embedding + L_Attention + L_FFN +
L_Logit + L_Student. All weights default to 1 and L_Logit to soft cross-entropy at T = 1 for a
classifier, MSE on the output for a regression head such as STS-B (reference digest §4, q10–11).

``teachers`` must hold ``"pretrained"`` and ``"finetuned"``; ``data`` must hold ``"stage1"`` and
``"stage2"`` (names configurable per stage).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import compresskit
from compresskit import FINETUNED, PRETRAINED, ConfigError, Registry, StageOptions, StagePlan
from compresskit.plugin import check_stage, parse_stage, pick, run_stage, with_default_losses

INTERMEDIATE = {"embedding_mse": 1.0, "attention_score_mse": 1.0, "hidden_mse": 1.0}

STAGE1_DEFAULTS = StageOptions(losses=dict(INTERMEDIATE), teacher=PRETRAINED, data="stage1")
STAGE2_DEFAULTS = StageOptions(teacher=FINETUNED, data="stage2")


def stage2_losses(problem_type: str | None) -> dict[str, float]:
    """Eq. 14 in full: intermediate terms, logit KD (MSE for regression, else soft CE) and labels."""
    logit = "logit_mse" if problem_type == "regression" else "logit_soft_ce"
    return {**INTERMEDIATE, logit: 1.0, "task": 1.0}


@dataclass(frozen=True)
class TwoStageOptions:
    """``stage1`` / ``stage2`` are :class:`StageOptions` tables; ``copy_from_teacher`` names modules
    (exact paths or dotted suffixes) copied from the stage-2 teacher into the student before stage 2."""

    stage1: dict[str, Any] = field(default_factory=dict)
    stage2: dict[str, Any] = field(default_factory=dict)
    skip_stage1: bool = False
    copy_from_teacher: tuple[str, ...] = ("classifier", "pooler")


class TwoStageKD(compresskit.Distiller):
    """KroneckerBERT two-stage KD: intermediate KD on general text, then task KD with logits and labels."""

    name = "two_stage_kd"
    Options = TwoStageOptions

    def stages(self, problem_type: str | None = None) -> list[StagePlan]:
        """The validated options of each stage that will run, in order, with default losses for a
        student of ``problem_type`` (``None``: a classifier); each sits in its own table."""
        stages = []
        if not self.options.skip_stage1:
            stage1 = parse_stage(self.options.stage1, STAGE1_DEFAULTS, f"{self.name}.stage1")
            stages.append(StagePlan("stage1", stage1, "stage1"))
        stage2 = parse_stage(self.options.stage2, STAGE2_DEFAULTS, f"{self.name}.stage2")
        stages.append(StagePlan("stage2", with_default_losses(stage2, stage2_losses(problem_type)), "stage2"))
        return stages

    def distill(
        self,
        student: nn.Module,
        teachers: Mapping[str, nn.Module],
        data: Mapping[str, Any],
        *,
        output_dir: Any,
        evaluate: Any = None,
        tracker: Any = None,
        registry: Registry | None = None,
        defaults: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        registry = registry or Registry.from_plugins()
        plans = self.stages(compresskit.problem_type_of(student))
        for plan in plans:  # fail on a missing teacher or data before any training
            pick(teachers, plan.teacher, "teacher", f"{self.name}.{plan.name}")
            pick(data, plan.data, "data", f"{self.name}.{plan.name}")
        results: dict[str, Any] = {}
        for plan in plans:
            if plan.name == "stage2":
                copied = copy_modules(teachers[plan.teacher], student, self.options.copy_from_teacher)
                results["copied_from_teacher"] = copied
            results[plan.name] = run_stage(
                plan,
                distiller=self.name,
                student=student,
                teachers=teachers,
                data=data,
                output_dir=Path(output_dir),
                evaluate=evaluate if plan.name == "stage2" else None,
                tracker=tracker,
                registry=registry,
                defaults=defaults,
            )
        return results

    def check_student(
        self,
        student: nn.Module,
        teachers: Mapping[str, nn.Module],
        *,
        registry: Registry | None = None,
        where: str = "",
    ) -> None:
        """Each stage's losses against the planned student, and stage 2's copy from the teacher."""
        registry = registry or Registry.from_plugins()
        where = where or self.name
        for plan in self.stages(compresskit.problem_type_of(student)):
            at = f"{where}.{plan.name}"
            if plan.name == "stage2":
                teacher = pick(teachers, plan.teacher, "teacher", at)
                _check_copy(teacher, student, self.options.copy_from_teacher, where)
            check_stage(plan, student=student, teachers=teachers, registry=registry, where=at)


def _check_copy(teacher: nn.Module, student: nn.Module, patterns: tuple[str, ...], where: str) -> None:
    try:
        copy_modules(teacher, student, patterns)
    except ConfigError as exc:
        detail = " ".join(str(exc).removeprefix("two_stage_kd.copy_from_teacher: ").split())
        raise ConfigError(
            f"{where}.copy_from_teacher: stage 2 would fail after stage 1 has trained: {detail} A module a "
            "decompose step replaced in the student no longer has the teacher's dense layout. Keep it out "
            'of the decompose step (e.g. exclude = ["pooler"] in its group) or drop it from '
            'copy_from_teacher (e.g. copy_from_teacher = ["classifier"]).'
        ) from None


def _matching(model: nn.Module, pattern: str) -> dict[str, nn.Module]:
    return {
        name: module
        for name, module in model.named_modules()
        if name and (name == pattern or name.endswith("." + pattern))
    }


def copy_modules(source: nn.Module, target: nn.Module, patterns: tuple[str, ...]) -> list[str]:
    """Copy the parameters of modules named by ``patterns`` from ``source`` into ``target``.

    Patterns present in neither model are skipped (a model may have no pooler); a module present in
    both with different shapes, or no pattern matching at all, raises :class:`ConfigError`.
    """
    copied = []
    for pattern in patterns:
        for name, module in _matching(target, pattern).items():
            found = dict(source.named_modules()).get(name)
            if found is None:
                found = next(iter(_matching(source, pattern).values()), None)
            if found is None:
                continue
            try:
                with torch.no_grad():
                    module.load_state_dict(found.state_dict())
            except RuntimeError as exc:
                raise ConfigError(
                    f"two_stage_kd.copy_from_teacher: cannot copy {name!r} from the teacher into the "
                    f"student: {exc}"
                ) from None
            copied.append(name)
    if patterns and not copied:
        raise ConfigError(
            f"two_stage_kd.copy_from_teacher: none of {list(patterns)} names a module of both the "
            "student and the teacher; give the head's module path (e.g. 'classifier') or an empty list."
        )
    return copied
