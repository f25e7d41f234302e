"""Run the paper's experiment grid (strategies × GLUE tasks) through the end-to-end pipeline.

Each cell is one ``compresskit run`` of a base config with ``--set`` overrides (teacher, task, preset,
scale), through :func:`run_strategy`. The teacher is fine-tuned once per task (by the first strategy's
run) and reused by the others through ``model.finetuned_teacher``. Results go to
``benchmarks/results/<name>.json`` and a Markdown table in the layout of KroneckerBERT Tables 2/4:
a teacher row, one row per strategy with parameters, compression factor, each task's primary metric,
their average, and retention = average(student) / average(teacher) × 100.

    python benchmarks/run_grid.py --teacher default --tasks sst2,mrpc \
        --strategies kroneckerbert21,kroneckerbert8 --scale cpu --name minilm_glue_cpu

A strategy is a preset name (``steps[0].preset`` of the base config) or a path to a config file.
Scales: ``smoke`` (seconds per cell, checks the plumbing), ``cpu`` (a few thousand examples, minutes
per cell on 2 cores), ``full`` (the base config as written: full training sets, hours on a CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BASE_CONFIG = ROOT / "configs" / "kroneckerbert21-minilm.toml"

#: ``--set`` overrides per scale (the base config is the ``full`` scale).
SCALES: dict[str, list[str]] = {
    "smoke": [
        "finetune.max_length=32",
        "finetune.train_limit=64",
        "finetune.training.num_epochs=1.0",
        "steps[1].data.stage1.limit=32",
        "steps[1].data.stage1.options.block_size=32",
        "steps[1].data.stage2.limit=64",
        "steps[1].data.stage2.max_length=32",
        "steps[1].options.stage1.training.num_epochs=1.0",
        "steps[1].options.stage2.training.num_epochs=1.0",
        "evaluation.limit=64",
        "evaluation.max_length=32",
        "measure.seq_len=32",
        "measure.repeats=3",
    ],
    "cpu": [
        "finetune.max_length=64",
        "finetune.train_limit=2000",
        "finetune.training.num_epochs=1.0",
        "steps[1].data.stage1.limit=512",
        "steps[1].data.stage1.options.block_size=64",
        "steps[1].data.stage2.limit=2000",
        "steps[1].data.stage2.max_length=64",
        "steps[1].options.stage1.training.num_epochs=1.0",
        "steps[1].options.stage2.training.num_epochs=1.0",
        "evaluation.max_length=64",
        "measure.seq_len=128",
        "measure.repeats=10",
    ],
    "full": [],
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--teacher", default="default", help="pre-trained model folder, or 'default'")
    parser.add_argument("--tasks", default="sst2,mrpc", help="comma-separated GLUE tasks")
    parser.add_argument("--strategies", default="kroneckerbert21,kroneckerbert8")
    parser.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    parser.add_argument("--config", default=str(BASE_CONFIG), help="base config for preset strategies")
    parser.add_argument("--name", help="results file stem (default: grid_<scale>)")
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "grid"), help="where run folders go")
    parser.add_argument("--experiment", help="MLflow experiment prefix (default: compresskit-grid-<name>)")
    parser.add_argument("--tracking-uri", help="MLflow store (default: sqlite:///<runs-dir>/mlflow.db)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra override")
    return parser.parse_args(argv)


def run_strategy(config_path: str | Path, overrides: Sequence[str], output_dir: str | Path) -> dict[str, Any]:
    """Run one config with ``--set`` overrides through the pipeline; return its summary and run dir.

    Resumes a run already (partly) done in ``output_dir`` with the same config, like ``compresskit run``.
    """
    from compresskit.plugin import Pipeline, load_config

    strategy = load_config(config_path, list(overrides))
    result = Pipeline(strategy, output_dir=output_dir, progress=False).run()
    return {"run_dir": str(result.run_dir), "run_id": result.run_id, "summary": result.summary}


def cell_overrides(args: argparse.Namespace, strategy: str, task: str, teacher_dir: str | None) -> list[str]:
    """Overrides of one grid cell: teacher, task, preset (unless a config file), scale, tracking."""
    sets = [
        f'model.teacher="{args.teacher}"',
        f'task.options.task="{task}"',
        f'name="{strategy_label(strategy)}-{task}"',
    ]
    if not is_config_file(strategy):
        sets.append(f'steps[0].preset="{strategy}"')
    if teacher_dir is not None:
        sets.append(f'model.finetuned_teacher="{teacher_dir}"')
    sets += SCALES[args.scale]
    sets.append(f'tracking.experiment="{args.experiment}-{task}"')
    sets.append(f'tracking.tracking_uri="{args.tracking_uri}"')
    return sets + list(args.extra)


def is_config_file(strategy: str) -> bool:
    return strategy.endswith(".toml")


def strategy_label(strategy: str) -> str:
    return Path(strategy).stem if is_config_file(strategy) else strategy


def finetuned_teacher(run_dir: str) -> str | None:
    """The fine-tuned teacher a run produced (its ``teacher`` stage), to reuse in the task's other cells."""
    state_file = Path(run_dir) / "state.json"
    if not state_file.is_file():
        return None
    record = json.loads(state_file.read_text()).get("stages", {}).get("teacher", {})
    path = record.get("result", {}).get("path")
    return str(path) if path and Path(path).exists() else None


def run_grid(args: argparse.Namespace) -> dict[str, Any]:
    cells = []
    for task in args.tasks.split(","):
        teacher_dir = None
        for strategy in args.strategies.split(","):
            config = strategy if is_config_file(strategy) else args.config
            overrides = cell_overrides(args, strategy, task, teacher_dir)
            output = Path(args.runs_dir) / args.name / f"{strategy_label(strategy)}-{task}"
            print(f"[grid] {strategy_label(strategy)} on {task} ({args.scale}) -> {output}", file=sys.stderr)
            started = time.perf_counter()
            result = run_strategy(config, overrides, output)
            teacher_dir = teacher_dir or finetuned_teacher(result["run_dir"])
            cells.append(
                cell_record(strategy, task, config, overrides, result, time.perf_counter() - started)
            )
    return {
        "name": args.name,
        "scale": args.scale,
        "scale_overrides": SCALES[args.scale],
        "teacher": args.teacher,
        "tasks": args.tasks.split(","),
        "strategies": [strategy_label(s) for s in args.strategies.split(",")],
        "experiment": args.experiment,
        "command": "python benchmarks/run_grid.py " + " ".join(sys.argv[1:]),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": environment(),
        "cells": cells,
    }


def cell_record(
    strategy: str, task: str, config: str, overrides: list[str], result: dict[str, Any], seconds: float
) -> dict[str, Any]:
    summary = result["summary"]
    primary = summary["primary_metric"]
    return {
        "strategy": strategy_label(strategy),
        "task": task,
        "config": str(config),
        "overrides": overrides,
        "primary_metric": primary,
        "teacher": {k: summary["teacher"].get(k) for k in ("metrics", "params", "latency_ms", "size_mb")},
        "student": {
            k: summary["student"].get(k)
            for k in ("metrics", "params", "compression_factor", "latency_ms", "size_mb", "flops")
        },
        "run_dir": result["run_dir"],
        "run_id": result["run_id"],
        "seconds": round(seconds, 1),
    }


def pareto_plots(args: argparse.Namespace) -> dict[str, str]:
    """``compresskit compare`` on each task's experiment: the table on stdout, a Pareto PNG in results/."""
    from compresskit.plugin import cli_main as cli

    plots = {}
    for task in args.tasks.split(","):
        plot = RESULTS / f"{args.name}_{task}_pareto.png"
        experiment = f"{args.experiment}-{task}"
        cli(
            [
                "compare",
                "--experiment",
                experiment,
                "--tracking-uri",
                args.tracking_uri,
                "--output",
                str(plot),
            ]
        )
        plots[task] = str(plot.relative_to(ROOT))
    return plots


def environment() -> dict[str, Any]:
    from compresskit.plugin import environment_info

    return {**environment_info(), "load_average": [round(x, 2) for x in os.getloadavg()]}


def markdown(results: dict[str, Any]) -> str:
    """Table 2/4 layout: teacher row, one row per strategy, per-task primary metric, average, retention."""
    tasks = results["tasks"]
    cells = {(c["strategy"], c["task"]): c for c in results["cells"]}
    primary = {t: next((c["primary_metric"] for c in results["cells"] if c["task"] == t), "?") for t in tasks}
    header = ["Model", "Params", "CF", *(f"{t.upper()} ({primary[t]})" for t in tasks), "Avg", "Retention %"]
    teacher_scores = [
        _score(c["teacher"], c["primary_metric"]) for c in _first_per_task(results["cells"], tasks)
    ]
    teacher_params = next((c["teacher"]["params"] for c in results["cells"]), None)
    teacher_avg = _mean(teacher_scores)
    rows = [
        ["Teacher", _count(teacher_params), "1.0x", *map(_pct, teacher_scores), _pct(teacher_avg), "100.0"]
    ]
    for strategy in results["strategies"]:
        row_cells = [cells.get((strategy, t)) for t in tasks]
        scores = [_score(c["student"], c["primary_metric"]) if c else None for c in row_cells]
        first = next((c for c in row_cells if c), None)
        params = first["student"]["params"] if first else None
        factor = first["student"]["compression_factor"] if first else None
        avg = _mean(scores)
        retention = 100 * avg / teacher_avg if avg is not None and teacher_avg else None
        rows.append(
            [
                strategy,
                _count(params),
                f"{factor:.1f}x" if factor else "-",
                *map(_pct, scores),
                _pct(avg),
                f"{retention:.1f}" if retention is not None else "-",
            ]
        )
    lines = [
        f"# {results['name']}: teacher `{results['teacher']}`, scale `{results['scale']}`",
        "",
        f"Scale `{results['scale']}` overrides: {_overrides(results)}. "
        "Metrics ×100 on the dev split (evaluation limits as overridden).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
        f"Command: `{results['command']}`",
        "",
    ]
    return "\n".join(lines)


def _overrides(results: dict[str, Any]) -> str:
    return ", ".join(f"`{o}`" for o in results["scale_overrides"]) or "none (the full config)"


def _first_per_task(cells: list[dict[str, Any]], tasks: list[str]) -> list[dict[str, Any]]:
    return [next(c for c in cells if c["task"] == t) for t in tasks if any(c["task"] == t for c in cells)]


def _score(row: dict[str, Any], metric: str) -> float | None:
    value = (row.get("metrics") or {}).get(metric)
    return float(value) if isinstance(value, int | float) else None


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present and len(present) == len(values) else None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _count(value: Any) -> str:
    return "-" if value is None else f"{value / 1e6:.2f}M"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.name = args.name or f"grid_{args.scale}"
    args.experiment = args.experiment or f"compresskit-grid-{args.name}"
    Path(args.runs_dir).mkdir(parents=True, exist_ok=True)
    args.tracking_uri = args.tracking_uri or f"sqlite:///{Path(args.runs_dir).resolve() / 'mlflow.db'}"
    results = run_grid(args)
    results["pareto_plots"] = pareto_plots(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (RESULTS / f"{args.name}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
