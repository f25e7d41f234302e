"""Same config, seed and machine → bit-identical teacher, student and metrics on the CPU.

Each run starts from a different global random state (as two fresh processes, or two calls in one
notebook, would): only the strategy's seed may decide the result.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_pipeline import assert_same_weights, make_tiny_teacher, tiny_strategy_dict

import compresskit
from compresskit.cli import main

#: Summary numbers that must repeat exactly (latency is a timing and is not expected to).
REPEATABLE = ("metrics", "params", "flops", "size_mb", "compression_factor")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    return make_tiny_teacher(tmp_path_factory.mktemp("repro") / "teacher", data_dir)


def _repeatable(summary: dict) -> dict:
    return {role: {k: summary[role][k] for k in REPEATABLE} for role in ("teacher", "student")}


def test_compress_twice_gives_identical_teacher_student_and_metrics(
    teacher: Path, data_dir: Path, tmp_path: Path
) -> None:
    strategy = tiny_strategy_dict(teacher, data_dir)
    results = []
    for attempt in (1, 2):
        torch.manual_seed(1000 + attempt)  # a different caller state each time
        before = torch.get_rng_state()
        results.append(
            compresskit.compress(None, strategy, output_dir=tmp_path / f"run{attempt}", progress=False)
        )
        assert torch.equal(torch.get_rng_state(), before), "compress() changed the caller's random state"
    first, second = results
    assert_same_weights(tmp_path / "run1" / "teacher" / "model", tmp_path / "run2" / "teacher" / "model")
    assert_same_weights(first.model_dir, second.model_dir)
    assert _repeatable(first.summary) == _repeatable(second.summary)


def test_cli_run_twice_gives_identical_models(teacher: Path, data_dir: Path, tmp_path: Path) -> None:
    from compresskit.config import dumps_toml

    config = tmp_path / "tiny.toml"
    config.write_text(dumps_toml(tiny_strategy_dict(teacher, data_dir)))
    for attempt in (1, 2):
        torch.manual_seed(attempt)
        out = tmp_path / f"run{attempt}"
        assert main(["run", str(config), "--output", str(out), "--no-progress"]) == 0
    assert_same_weights(tmp_path / "run1" / "teacher" / "model", tmp_path / "run2" / "teacher" / "model")
    assert_same_weights(tmp_path / "run1" / "model", tmp_path / "run2" / "model")
    summaries = [json.loads((tmp_path / f"run{i}" / "summary.json").read_text()) for i in (1, 2)]
    assert _repeatable(summaries[0]) == _repeatable(summaries[1])


def test_finetune_and_distill_commands_twice_give_identical_models(
    teacher: Path, data_dir: Path, tmp_path: Path
) -> None:
    glue = ["--task-option", "task=sst2", "--task-option", f"data_dir={data_dir / 'glue-sample'!s}"]
    for attempt in (1, 2):
        torch.manual_seed(attempt)
        out = tmp_path / f"teacher{attempt}"
        finetune = ["finetune", "--model", str(teacher), *glue, "--output", str(out), "--epochs", "1"]
        assert main([*finetune, "--max-length", "32", "--batch-size", "16", "--no-progress"]) == 0
    assert_same_weights(tmp_path / "teacher1", tmp_path / "teacher2")

    student = tmp_path / "student"
    compress = ["compress", "--model", str(tmp_path / "teacher1"), "--config", _lowrank(tmp_path)]
    assert main([*compress, "--output", str(student)]) == 0
    options = json.dumps({"training": {"batch_size": 16, "num_epochs": 1.0, "progress": False}})
    for attempt in (1, 2):
        torch.manual_seed(attempt)
        out = tmp_path / f"distilled{attempt}"
        distill = ["distill", "--student", str(student), "--teacher", str(tmp_path / "teacher1")]
        distill += ["--distiller", "logits_kd", "--options", options, *glue, "--max-length", "32"]
        assert main([*distill, "--output", str(out)]) == 0
    assert_same_weights(tmp_path / "distilled1" / "model", tmp_path / "distilled2" / "model")


def _lowrank(folder: Path) -> str:
    path = folder / "lowrank.toml"
    path.write_text(
        'name = "lowrank"\n[[steps]]\nkind = "decompose"\n[[steps.groups]]\nname = "ffn"\ntypes = ["Linear"]\n'
        'names = ["intermediate.dense"]\ndecomposition = "low_rank"\noptions = { rank = 4 }\n'
    )
    return str(path)
