"""Every shipped config parses, validates against the registry, and — for MiniLM — plans on the real model."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from compresskit.config import load_config, validate_components
from compresskit.preflight import Checked, preflight
from compresskit.registry import Registry
from compresskit.strategy import DecomposeStep, DistillStep, Strategy

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.toml"))
# Task-KD configs start from a saved (already decomposed) student given by `model.student`.
STAGE2_ONLY = {"task-kd-minilm.toml"}
MINILM = [p for p in CONFIGS if "minilm" in p.name and p.name not in STAGE2_ONLY]


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.from_plugins()


_CHECKED: dict[str, Checked] = {}


def checked(path: Path, registry: Registry) -> Checked:
    """Preflight of a config (the dry-run plan on the real MiniLM), computed once per module."""
    if path.name not in _CHECKED:
        _CHECKED[path.name] = preflight(load_config(path), registry)
    return _CHECKED[path.name]


def test_the_shipped_set_is_complete() -> None:
    names = {p.name for p in CONFIGS}
    assert {
        "demo-minilm-sst2.toml",
        "kroneckerbert21-bert-base.toml",
        "kroneckerbert8-bert-base.toml",
        "kroneckerbert21-minilm.toml",
        "kroneckerbert8-minilm.toml",
        "lowrank-minilm.toml",
        "tensortrain-minilm.toml",
        "composed-minilm.toml",
    } <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses_round_trips_and_validates(path: Path, registry: Registry) -> None:
    strategy = load_config(path)
    assert Strategy.from_dict(strategy.to_dict()) == strategy
    assert Strategy.from_dict(tomllib.loads(path.read_text())) == strategy
    validate_components(strategy, registry)
    assert any(isinstance(s, DistillStep) for s in strategy.steps)
    if path.name in STAGE2_ONLY:  # no decomposition of its own: stage 2 only, of a saved student
        (step,) = strategy.steps
        assert isinstance(step, DistillStep) and step.options.get("skip_stage1") is True
    else:
        assert any(isinstance(s, DecomposeStep) for s in strategy.steps)


@pytest.mark.parametrize("path", MINILM, ids=lambda p: p.name)
def test_minilm_config_plans_on_the_real_model(path: Path, registry: Registry, minilm_path: Path) -> None:
    result = checked(path, registry)
    assert result.plans, "every MiniLM config decomposes something"
    for plan in result.plans:
        assert plan.modules and not plan.skipped
        assert plan.after.params < plan.before.params


def test_matched_parameter_counts(registry: Registry, minilm_path: Path) -> None:
    """The low-rank and tensor-train configs sit within 5% of KroneckerBERT21-MiniLM's parameter count."""
    after = {}
    for name in ("kroneckerbert21-minilm.toml", "lowrank-minilm.toml", "tensortrain-minilm.toml"):
        (plan,) = checked(CONFIGS[0].parent / name, registry).plans
        after[name] = plan.model_params_after
    reference = after.pop("kroneckerbert21-minilm.toml")
    for name, params in after.items():
        assert abs(params - reference) / reference < 0.05, (name, params, reference)


def test_composed_config_chains_steps_with_different_decompositions() -> None:
    strategy = load_config(CONFIGS[0].parent / "composed-minilm.toml")
    kinds = [s.kind for s in strategy.steps]
    assert kinds == ["decompose", "distill", "decompose", "distill"]
    first, second = strategy.steps[0], strategy.steps[2]
    assert isinstance(first, DecomposeStep) and isinstance(second, DecomposeStep)
    assert {g["decomposition"] for g in first.groups} == {"kronecker"}
    assert {g["decomposition"] for g in second.groups} == {"low_rank"}


def test_demo_command_runs_the_shipped_demo_config() -> None:
    from compresskit.commands.demo import demo_config_path

    path = demo_config_path()
    assert path == CONFIGS[0].parent / "demo-minilm-sst2.toml"
    strategy = load_config(path)
    assert strategy.model.teacher == "default"
    assert strategy.steps[0].preset.startswith("kroneckerbert")  # type: ignore[union-attr]
