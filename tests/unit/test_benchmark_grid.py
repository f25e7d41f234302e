"""benchmarks/run_grid.py: per-cell overrides and the paper-style table (no training here)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def load_grid() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_grid", ROOT / "benchmarks" / "run_grid.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cell(
    strategy: str, task: str, metric: str, student: float, teacher: float, params: int
) -> dict[str, Any]:
    return {
        "strategy": strategy,
        "task": task,
        "primary_metric": metric,
        "teacher": {"metrics": {metric: teacher}, "params": 22_000_000},
        "student": {"metrics": {metric: student}, "params": params, "compression_factor": 22e6 / params},
    }


def test_overrides_select_teacher_task_preset_scale_and_tracking() -> None:
    grid = load_grid()
    args = argparse.Namespace(
        teacher="default", scale="smoke", experiment="exp", tracking_uri="sqlite:///x.db", extra=["seed=1"]
    )
    sets = grid.cell_overrides(args, "kroneckerbert8", "mrpc", "/t/teacher")
    assert 'steps[0].preset="kroneckerbert8"' in sets
    assert 'task.options.task="mrpc"' in sets
    assert 'model.finetuned_teacher="/t/teacher"' in sets
    assert 'tracking.experiment="exp-mrpc"' in sets and sets[-1] == "seed=1"
    assert set(grid.SCALES["smoke"]) <= set(sets)
    from_file = grid.cell_overrides(args, "configs/lowrank-minilm.toml", "sst2", None)
    assert not any(s.startswith("steps[0].preset") for s in from_file)
    assert 'name="lowrank-minilm-sst2"' in from_file


def test_table_has_teacher_row_strategy_rows_average_and_retention() -> None:
    grid = load_grid()
    results = {
        "name": "g",
        "teacher": "default",
        "scale": "smoke",
        "scale_overrides": [],
        "command": "python benchmarks/run_grid.py",
        "tasks": ["sst2", "mrpc"],
        "strategies": ["kb21"],
        "cells": [
            cell("kb21", "sst2", "accuracy", 0.80, 0.90, 1_000_000),
            cell("kb21", "mrpc", "f1", 0.70, 0.80, 1_000_000),
        ],
    }
    lines = grid.markdown(results).splitlines()
    header = next(line for line in lines if line.startswith("| Model"))
    assert "SST2 (accuracy)" in header and "MRPC (f1)" in header
    teacher = next(line for line in lines if line.startswith("| Teacher"))
    assert [c.strip() for c in teacher.split("|")[1:-1]] == [
        "Teacher",
        "22.00M",
        "1.0x",
        "90.0",
        "80.0",
        "85.0",
        "100.0",
    ]
    row = next(line for line in lines if line.startswith("| kb21"))
    retention = 100 * ((0.80 + 0.70) / 2) / ((0.90 + 0.80) / 2)
    assert [c.strip() for c in row.split("|")[1:-1]] == [
        "kb21",
        "1.00M",
        "22.0x",
        "80.0",
        "70.0",
        "75.0",
        f"{retention:.1f}",
    ]
