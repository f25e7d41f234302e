"""Single-stage distillers: ``logits_kd`` (Hinton et al. 2015) and ``intermediate_kd`` (TinyBERT-style).

Both train the student against one teacher (``teachers["finetuned"]`` by default) on one loader
(``data["train"]``); their options are a :class:`~.stage.StageOptions` table with other default losses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

import compresskit
from compresskit.registry import Registry

from .stage import StageOptions, check_stage, run_stage


class SingleStageDistiller(compresskit.Distiller):
    """A distiller of one stage whose options are a :class:`StageOptions`."""

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
    ) -> dict[str, Any]:
        result = run_stage(
            name="train",
            distiller=self.name,
            stage=self.options,
            student=student,
            teachers=teachers,
            data=data,
            output_dir=Path(output_dir),
            evaluate=evaluate,
            tracker=tracker,
            registry=registry or Registry.from_plugins(),
        )
        return {"train": result}

    def check_student(
        self,
        student: nn.Module,
        teachers: Mapping[str, nn.Module],
        *,
        registry: Registry | None = None,
        where: str = "",
    ) -> None:
        check_stage(
            stage=self.options, student=student, teachers=teachers,
            registry=registry or Registry.from_plugins(), where=where or self.name,
        )  # fmt: skip


def _hinton() -> dict[str, Any]:
    return {"logit_kl": {"weight": 0.5, "temperature": 2.0}, "task": {"weight": 0.5}}


@dataclass(frozen=True)
class LogitsKDOptions(StageOptions):
    """Default: 0.5·T²·KL(p_T ‖ p_S) at T = 2 + 0.5·cross-entropy on the labels."""

    losses: dict[str, Any] = field(default_factory=_hinton)


class LogitsKD(SingleStageDistiller):
    """Hinton KD on the output logits, plus the task loss."""

    name = "logits_kd"
    Options = LogitsKDOptions


def _intermediate() -> dict[str, Any]:
    return {"embedding_mse": 1.0, "attention_score_mse": 1.0, "hidden_mse": 1.0}


@dataclass(frozen=True)
class IntermediateKDOptions(StageOptions):
    """Default: embedding, attention-score and hidden-state MSE (KroneckerBERT stage-1 losses)."""

    losses: dict[str, Any] = field(default_factory=_intermediate)


class IntermediateKD(SingleStageDistiller):
    """Intermediate-layer KD only (no logits, no labels): usable with a headless teacher."""

    name = "intermediate_kd"
    Options = IntermediateKDOptions
