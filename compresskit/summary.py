"""The end-of-run summary: teacher vs student accuracy, size, speed; ``summary.json`` and the table.

FLOPs follow the paper's rule (linear layers only, ``(2n − 1)·m`` per token, KroneckerBERT §3.2.3) at
``[measure] seq_len`` tokens. The student's FLOPs are the teacher's dense count with every replaced
module's dense cost swapped for its compressed cost, as recorded in each decompose step's report.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from compresskit.report_table import format_table
from compresskit.run_state import RunState
from compresskit.strategy import Strategy


def summarize(
    strategy: Strategy,
    state: RunState,
    teacher: Mapping[str, Any],
    evaluation: Mapping[str, Any],
    measured: Mapping[str, Any],
    saved: Mapping[str, Any],
    task: Any,
) -> dict[str, Any]:
    """Everything the run measured, in one JSON-able dict (also the source of the tracker metrics)."""
    seq_len = strategy.measure.seq_len
    rows = {}
    for role in ("teacher", "student"):
        numbers = measured[role]
        latency = numbers.get("latency") or {}
        rows[role] = {
            "metrics": dict(evaluation[role]),
            "params": numbers["params"],
            "size_mb": numbers.get("size_mb"),
            "latency_ms": latency.get("median_ms"),
            "latency_p90_ms": latency.get("p90_ms"),
            "threads": latency.get("threads"),
            "flops": numbers.get("flops"),
        }
    rows["student"]["flops"] = student_flops(Path(saved["path"]), rows["teacher"]["flops"], seq_len)
    rows["student"]["compression_factor"] = rows["teacher"]["params"] / max(rows["student"]["params"], 1)
    rows["teacher"]["compression_factor"] = 1.0
    summary = {
        "strategy": strategy.name,
        "task": {"name": task.name, "options": dict(strategy.task.options)},
        "primary_metric": task.primary_metric,
        "eval_split": strategy.evaluation.split,
        "measure": {"seq_len": seq_len, "batch_size": strategy.measure.batch_size},
        "teacher": {**rows["teacher"], "finetuned_here": teacher.get("finetuned_here", False)},
        "student": rows["student"],
        "model_dir": saved["path"],
        "stage_seconds": {k: v.get("seconds") for k, v in state.data["stages"].items()},
        "run_id": state.data.get("run_id"),
        "tracking_uri": tracking_uri(strategy),
    }
    summary["metrics"] = tracker_metrics(summary)
    return summary


def student_flops(model_dir: Path, teacher_flops: int | None, tokens: int) -> int | None:
    """Teacher FLOPs minus each replaced module's dense cost plus its compressed cost.

    Read from the plans saved with the student (its ``config.json``, or ``compression_plan.json`` of
    older folders), which list every plan applied to it — in this run's decompose steps or before it,
    for a student started from a saved folder (``model.student``).
    """
    from compresskit.saving import is_compressed_folder, read_plans

    if teacher_flops is None:
        return None
    total = float(teacher_flops)
    saved = read_plans(model_dir) if is_compressed_folder(model_dir) else ()
    for plan in (item.to_dict() for item in saved):
        scale = tokens / float(plan.get("tokens", tokens) or tokens)
        totals = plan.get("totals", {})
        total += scale * (totals.get("flops_after", 0) - totals.get("flops_before", 0))
    return round(total)


def tracker_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """Final metrics under the shared names: ``student/<metric>``, ``teacher/<metric>``, ``params`` ..."""
    from compresskit.measure import STUDENT_PREFIX, TEACHER_PREFIX

    metrics: dict[str, float] = {}
    for role, prefix in (("student", STUDENT_PREFIX), ("teacher", TEACHER_PREFIX)):
        row = summary[role]
        for name, value in row["metrics"].items():
            metrics[f"{prefix}{name}"] = float(value)
        for name in ("params", "size_mb", "latency_ms", "latency_p90_ms", "flops", "compression_factor"):
            value = row.get(name)
            if isinstance(value, int | float):
                key = name if role == "student" else f"{prefix}{name}"
                metrics[key] = float(value)
    primary = summary["primary_metric"]
    teacher_score = summary["teacher"]["metrics"].get(primary)
    student_score = summary["student"]["metrics"].get(primary)
    if teacher_score and student_score is not None:
        metrics["retention"] = float(student_score) / float(teacher_score)
    return metrics


def tracking_uri(strategy: Strategy) -> str | None:
    if strategy.tracking.tracker == "none":
        return None
    uri = strategy.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        uri = prefix + str(Path(uri[len(prefix) :]).resolve())  # absolute, so the hint works from anywhere
    return uri


def format_summary(summary: Mapping[str, Any]) -> str:
    """The table printed at the end of a run, then how to open the run in the MLflow UI."""
    primary = summary["primary_metric"]
    split = summary.get("eval_split", "dev")
    seq = summary["measure"]["seq_len"]
    batch = summary["measure"]["batch_size"]
    columns = ["model", f"{split} {primary}", "params", "compression", "size (MB)", "latency (ms)", "GFLOPs"]
    rows = []
    for role in ("teacher", "student"):
        row = summary[role]
        score = row["metrics"].get(primary)
        rows.append(
            [
                role,
                f"{score:.4f}" if isinstance(score, float) else "-",
                row["params"],
                f"{row['compression_factor']:.2f}x",
                _fixed(row.get("size_mb"), 2),
                _fixed(row.get("latency_ms"), 2),
                _fixed((row.get("flops") or 0) / 1e9, 3),
            ]
        )
    threads = summary["student"].get("threads")
    lines = [
        f"Strategy {summary['strategy']!r} on {summary['task']['name']} {summary['task']['options']}",
        format_table(columns, rows, align_right=columns[1:]),
        f"latency: median CPU forward, batch {batch} x {seq} tokens, {threads} threads; "
        f"FLOPs: linear layers at {seq} tokens.",
        f"Compressed model: {summary['model_dir']}",
    ]
    uri = summary.get("tracking_uri")
    if uri and summary.get("run_id"):  # only a run the tracking store holds can be opened in the UI
        lines.append(f"MLflow run {summary.get('run_id')}: open the UI with")
        lines.append(f"  {mlflow_ui_command(uri)}   then http://127.0.0.1:5000")
    return "\n".join(lines)


def mlflow_ui_command(uri: str) -> str:
    """The shell command that opens the MLflow UI on ``uri``, runnable without an activated venv.

    ``python -m mlflow`` with this interpreter's absolute path: a bare ``mlflow`` is only on PATH when
    the virtual environment is activated.
    """
    import shlex
    import sys

    return f"{shlex.quote(sys.executable)} -m mlflow ui --backend-store-uri {shlex.quote(uri)}"


def _fixed(value: Any, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"


def write_run_card(model_dir: Path, summary: Mapping[str, Any], strategy: Strategy) -> None:
    """The model card of the run's final student, with what the run measured (teacher vs student)."""
    from compresskit import model_card

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    counts: dict[str, int] = {}
    for plan in (config.get("quantization_config") or {}).get("plans", []):
        for module in plan.get("modules", []):
            counts[module["decomposition"]] = counts.get(module["decomposition"], 0) + 1
    rows = {}
    for role in ("teacher", "student"):
        row = summary[role]
        rows[role] = {
            **{f"{summary.get('eval_split', 'dev')} {k}": v for k, v in row["metrics"].items()},
            "parameters": row["params"],
            "compression": f"{row['compression_factor']:.2f}x",
            "size (MB)": row.get("size_mb"),
            "latency (ms)": row.get("latency_ms"),
        }
    task = summary["task"]
    facts = model_card.CardFacts(
        architecture=(config.get("architectures") or ["?"])[0],
        base_model=model_card.base_model_id(strategy.model.teacher),
        parameters=int(summary["student"]["params"]),
        size_mb=summary["student"].get("size_mb"),
        decompositions=counts,
        strategy=strategy.name,
        description=strategy.description,
        task=f"{task['name']} {task['options']}" if task.get("options") else task["name"],
        metrics=rows,
        labels=[str(label) for label in (config.get("id2label") or {}).values()],
    )
    model_card.write(model_dir, facts)
