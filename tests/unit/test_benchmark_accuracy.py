"""benchmarks/accuracy.py: every job of every item is a valid command (no training here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import compresskit

ROOT = Path(__file__).resolve().parents[2]


def load_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("accuracy", ROOT / "benchmarks" / "accuracy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def strategy_of(argv: list[str]) -> compresskit.Strategy:
    sets = [argv[i + 1] for i, item in enumerate(argv) if item == "--set"]
    return compresskit.Strategy.from_file(argv[2], sets)


def test_every_run_job_resolves_to_a_valid_strategy(tmp_path: Path) -> None:
    accuracy = load_module()
    args = accuracy.parse_args(["--runs-dir", str(tmp_path)])
    jobs = list(accuracy.Grid(args).jobs(list(accuracy.ITEMS)))
    names = [job.name for job in jobs]
    assert len(names) == len(set(names))  # every job has its own folder
    registry = compresskit.Registry.from_plugins()
    strategies = {}
    for job in jobs:
        if job.argv[1] == "run":
            strategies[job.name] = strategy = strategy_of(job.argv)
            from compresskit.config import validate_components

            validate_components(strategy, registry)
    stsb = strategies["two-stage-kroneckerbert8-stsb-s42"].steps[0]
    assert (
        "logit_mse" in stsb.options["stage2"]["losses"]
        and "logit_soft_ce" not in stsb.options["stage2"]["losses"]
    )
    no_stage1 = strategies["no-stage1-kroneckerbert8-mrpc-s42"]
    assert no_stage1.model.student is None and no_stage1.steps[0].preset == "kroneckerbert8"
    labels = strategies["labels-only-kroneckerbert8-sst2-s42"].steps[1].options["stage2"]["losses"]
    assert labels == {"task": 1.0}
    general = strategies["general-tt@kb21"].steps[0]
    assert {g["decomposition"] for g in general.groups} == {"tensor_train", "kronecker"}
    two_stage = strategies["two-stage-kroneckerbert21-rte-s2"]
    assert two_stage.seed == 2 and two_stage.model.student.endswith("general/kroneckerbert21/model")
    assert two_stage.model.finetuned_teacher.endswith("teachers/rte-s2")
