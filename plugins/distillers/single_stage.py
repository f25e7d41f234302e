"""Single-stage distillers: ``logits_kd`` (Hinton et al. 2015) and ``intermediate_kd`` (TinyBERT-style).

Both train the student against one teacher (``teachers["finetuned"]`` by default) on one loader
(``data["train"]``); their options are a :class:`compresskit.StageOptions` table with other default losses.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

import compresskit
from compresskit import Registry, StageOptions, StagePlan
from compresskit.plugin import check_stage, run_stage, with_default_losses


class SingleStageDistiller(compresskit.Distiller):
    """A distiller of one stage whose options are a :class:`StageOptions`."""

    def default_losses(self, problem_type: str | None) -> dict[str, Any]:
        """The losses used when the options name none, for a student of ``problem_type``."""
        raise NotImplementedError(f"distiller {self.name!r} does not implement default_losses()")

    def stages(self, problem_type: str | None = None) -> list[StagePlan]:
        """The one stage, ``"train"``, with default losses for a student of ``problem_type``; its
        options table is the distiller's own."""
        return [StagePlan("train", with_default_losses(self.options, self.default_losses(problem_type)))]

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
        (plan,) = self.stages(compresskit.problem_type_of(student))
        result = run_stage(
            plan,
            distiller=self.name,
            student=student,
            teachers=teachers,
            data=data,
            output_dir=Path(output_dir),
            evaluate=evaluate,
            tracker=tracker,
            registry=registry or Registry.from_plugins(),
            defaults=defaults,
        )
        return {plan.name: result}

    def check_student(
        self,
        student: nn.Module,
        teachers: Mapping[str, nn.Module],
        *,
        registry: Registry | None = None,
        where: str = "",
    ) -> None:
        (plan,) = self.stages(compresskit.problem_type_of(student))
        registry = registry or Registry.from_plugins()
        check_stage(plan, student=student, teachers=teachers, registry=registry, where=where or self.name)


class LogitsKD(SingleStageDistiller):
    """Hinton KD on the output logits, plus the task loss.

    Default losses: 0.5·T²·KL(p_T ‖ p_S) at T = 2 + 0.5·cross-entropy on the labels (Hinton et al.
    2015); for a regression head 0.5·MSE on the output + 0.5·MSE on the labels.
    """

    name = "logits_kd"
    Options = StageOptions

    def default_losses(self, problem_type: str | None) -> dict[str, Any]:
        if problem_type == "regression":
            return {"logit_mse": {"weight": 0.5}, "task": {"weight": 0.5}}
        return {"logit_kl": {"weight": 0.5, "temperature": 2.0}, "task": {"weight": 0.5}}


class IntermediateKD(SingleStageDistiller):
    """Intermediate-layer KD only (no logits, no labels): usable with a headless teacher.

    Default losses: embedding, attention-score and hidden-state MSE (KroneckerBERT stage-1 losses).
    """

    name = "intermediate_kd"
    Options = StageOptions

    def default_losses(self, problem_type: str | None) -> dict[str, Any]:
        return {"embedding_mse": 1.0, "attention_score_mse": 1.0, "hidden_mse": 1.0}
