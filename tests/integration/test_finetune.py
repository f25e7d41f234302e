"""``compresskit finetune`` / ``evaluate``: MiniLM-L6 fine-tuned on 256 real SST-2 sentences learns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from compresskit_plugins.glue import GlueTask

from compresskit import ConfigError
from compresskit.cli import main
from compresskit.commands.finetune import parse_task_options
from compresskit.defaults import default_teacher_path
from compresskit.models import load_task_model, load_tokenizer


def test_task_options_use_toml_values_with_string_fallback() -> None:
    parsed = parse_task_options(["task=sst2", "train_limit=256", "mlm_probability=0.15", "skip_malformed=true",
                                 'files=["a.txt", "b.txt"]', 'data_dir="/x y"', "version=2.0"])  # fmt: skip
    assert parsed == {"task": "sst2", "train_limit": 256, "mlm_probability": 0.15, "skip_malformed": True,
                      "files": ["a.txt", "b.txt"], "data_dir": "/x y", "version": 2.0}  # fmt: skip
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_task_options(["task"])


def test_bad_task_option_is_a_clean_cli_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["finetune", "--task", "glue", "--task-option", "tsk=sst2", "--output", str(tmp_path)])
    assert code == 3  # a config error: an option the task does not have
    assert "unknown option. Did you mean 'task'?" in capsys.readouterr().err


def _held_out_loss(model: torch.nn.Module, loader: Any) -> float:
    """Mean cross-entropy of ``model`` over every example of ``loader``."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            total += float(model(**batch).loss) * len(batch["labels"])
            count += len(batch["labels"])
    return total / count


@pytest.mark.slow
def test_finetune_sst2_then_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "teacher"
    args = ["finetune", "--model", "default", "--task", "glue", "--task-option", "task=sst2",
            "--task-option", "train_limit=256", "--task-option", "eval_limit=200", "--output", str(out),
            "--epochs", "1", "--lr", "2e-4", "--batch-size", "16", "--max-length", "64", "--seed", "42",
            "--no-progress", "--json"]  # fmt: skip
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["steps"] == 16
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert not (out / "work").exists()  # checkpoints removed after the model is saved
    assert json.loads((out / "finetune_metrics.json").read_text())["task"]["task"] == "sst2"

    # 16 steps are too few for a stable accuracy, but the held-out loss must fall below the loss of
    # the same model with its freshly initialised head (the starting point: same seed)
    task = GlueTask({"task": "sst2", "eval_limit": 200})
    tokenizer = load_tokenizer(out)
    loader = task.dataloader("dev", tokenizer, batch_size=100, max_length=64)
    torch.manual_seed(42)
    untrained = load_task_model(default_teacher_path(), task)
    finetuned = load_task_model(out, task)
    assert _held_out_loss(finetuned, loader) < _held_out_loss(untrained, loader) - 0.01

    assert main(["evaluate", "--model", str(out), "--task", "glue", "--task-option", "task=sst2",
                 "--limit", "200", "--max-length", "64", "--json"]) == 0  # fmt: skip
    reloaded = json.loads(capsys.readouterr().out)
    assert reloaded["accuracy"] == pytest.approx(result["metrics"]["accuracy"])


def test_evaluate_scores_a_squad_prediction_file(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = data_dir / "squad-sample" / "dev-v1.1-sample.json"
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps({"56be4db0acb8001400a502ec": "the Denver Broncos"}))
    options = ["--task-option", f"dev_file={sample}", "--task-option", f"train_file={sample}"]
    assert main(["evaluate", "--task", "squad", *options, "--predictions", str(predictions)]) == 0
    table = capsys.readouterr().out
    assert "missing_ids  1056 (e.g. 56be4db0acb8001400a502ed" in table
    assert main(["evaluate", "--task", "squad", *options, "--predictions", str(predictions), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["exact_match"] == pytest.approx(100 / 1057) and len(metrics["missing_ids"]) == 1056
    assert main(["evaluate", "--task", "glue", "--predictions", str(predictions)]) == 3
    assert "cannot score prediction files" in capsys.readouterr().err
