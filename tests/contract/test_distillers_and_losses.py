"""The distiller and loss contract suites over EVERY registered distiller and loss, and proof that they
catch breakage. Components are enumerated from the registry, so an installed plugin is covered too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import compresskit
from compresskit import Registry, StagePlan
from compresskit.testing import check_distiller, check_loss

REGISTRY = Registry.from_plugins()
#: Options that make a distiller trainable on the tiny models (none needed by the built-ins).
OPTIONS: dict[str, dict[str, Any]] = {}


@pytest.mark.parametrize("name", REGISTRY.names("distiller"))
def test_every_distiller_meets_the_contract(name: str, tmp_path: Path) -> None:
    check_distiller(REGISTRY.get("distiller", name), options=OPTIONS.get(name), output_dir=tmp_path)


@pytest.mark.parametrize("name", REGISTRY.names("loss"))
def test_every_loss_meets_the_contract(name: str) -> None:
    check_loss(REGISTRY.get("loss", name))


def test_the_regression_defaults_of_two_stage_kd_meet_the_contract(tmp_path: Path) -> None:
    check_distiller(REGISTRY.get("distiller", "two_stage_kd"), output_dir=tmp_path, problem_type="regression")


def _logits_kd() -> type[compresskit.Distiller]:
    return REGISTRY.get("distiller", "logits_kd")


class ReadsUndeclaredData(_logits_kd()):  # type: ignore[misc]
    """Declares data "train" but reads "extra": a runner would not provide it."""

    name = "reads_undeclared"

    def distill(self, student: Any, teachers: Any, data: Any, **kwargs: Any) -> dict[str, Any]:
        data["extra"]
        return super().distill(student, teachers, data, **kwargs)


class IgnoresDefaults(_logits_kd()):  # type: ignore[misc]
    """Drops the run's defaults (seed, max_steps, device)."""

    name = "ignores_defaults"

    def distill(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return super().distill(*args, **{**kwargs, "defaults": None})


class DeclaresNothing(_logits_kd()):  # type: ignore[misc]
    name = "declares_nothing"

    def stages(self, problem_type: str | None = None) -> list[StagePlan]:
        return []


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (ReadsUndeclaredData, "extra"),
        (IgnoresDefaults, "ignored defaults.max_steps"),
        (DeclaresNothing, "non-empty list"),
    ],
)
def test_the_distiller_suite_catches_breakage(broken: type, message: str, tmp_path: Path) -> None:
    options = {"training": {"num_epochs": 2.0}}  # without the defaults' max_steps: 4 steps
    with pytest.raises((AssertionError, KeyError), match=message):
        check_distiller(broken, options=options, output_dir=tmp_path)


def _hidden_mse() -> type[compresskit.Loss]:
    return REGISTRY.get("loss", "hidden_mse")


class IgnoresWeight(_hidden_mse()):  # type: ignore[misc]
    name = "ignores_weight"

    def __call__(self, inputs: compresskit.LossInputs) -> torch.Tensor:
        return self.compute(inputs).float()


class GrowsWhenMatched(_hidden_mse()):  # type: ignore[misc]
    name = "grows_when_matched"

    def compute(self, inputs: compresskit.LossInputs) -> torch.Tensor:
        return 10.0 - super().compute(inputs)


class PerToken(_hidden_mse()):  # type: ignore[misc]
    name = "per_token"

    def compute(self, inputs: compresskit.LossInputs) -> torch.Tensor:
        hidden = inputs.student.hidden_states or ()
        return (hidden[-1] - (inputs.teacher.hidden_states or ())[-1]).pow(2).mean(-1)


@pytest.mark.parametrize(
    ("broken", "message"),
    [(IgnoresWeight, "doubling the weight"), (GrowsWhenMatched, "smallest"), (PerToken, "scalar")],
)
def test_the_loss_suite_catches_breakage(broken: type, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_loss(broken)
