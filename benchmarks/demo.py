"""The embedded default end to end: `compresskit demo` in a fresh folder, timed, with its summary.

Runs ``compresskit run configs/demo-minilm-sst2.toml`` (what ``make demo`` runs) into a new temporary
run folder, so nothing is resumed, and writes ``benchmarks/results/<name>.{json,md}``: the wall time of
the whole command and of each stage, teacher and student dev accuracy, retention (student / teacher),
parameters, size, FLOPs and latency, with the command, machine, thread count and load average before
and after. Time it on an otherwise idle machine:

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/demo.py --name demo_minilm_sst2_cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "demo-minilm-sst2.toml"
RESULTS = ROOT / "benchmarks" / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--name", default="demo_minilm_sst2_cpu", help="results file stem")
    parser.add_argument("--set", action="append", default=[], dest="sets", help="override, as for run")
    return parser.parse_args(argv)


def run_demo(sets: list[str]) -> tuple[dict[str, Any], float, list[str]]:
    """Run the demo config in a fresh folder; return its summary, wall seconds and the command."""
    exe = str(Path(sys.executable).with_name("compresskit"))
    with tempfile.TemporaryDirectory(prefix="compresskit-demo-") as tmp:
        argv = [exe, "run", str(CONFIG), "--output", f"{tmp}/run", "--no-progress"]
        for item in sets:
            argv += ["--set", item]
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
        started = time.perf_counter()
        subprocess.run(argv, check=True, env=env, cwd=ROOT)
        seconds = time.perf_counter() - started
        summary = json.loads((Path(tmp) / "run" / "summary.json").read_text())
    return summary, seconds, argv


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def markdown(record: dict[str, Any]) -> str:
    s, t = record["summary"]["student"], record["summary"]["teacher"]
    metric = record["summary"]["primary_metric"]
    lines = [
        f"# {record['name']}: `compresskit demo` end to end",
        "",
        f"Command: `{record['command']}`  ",
        f"Machine: {record['machine']['cpu']}, {record['machine']['cores']} cores; load average before "
        f"{record['load_before']}, after {record['load_after']}; {record['date']}.",
        "",
        f"Wall time: **{record['wall_seconds'] / 60:.1f} min** ({record['wall_seconds']:.0f} s). Stages (s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in record["summary"]["stage_seconds"].items()),
        "",
        f"| model | dev {metric} | params | compression | size (MB) | GFLOPs | latency (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for role, row in (("teacher", t), ("student", s)):
        lines.append(
            f"| {role} | {100 * row['metrics'][metric]:.2f} | {row['params']:,} | "
            f"{row['compression_factor']:.2f}x | {row['size_mb']:.2f} | {row['flops'] / 1e9:.3f} | "
            f"{row['latency_ms']:.2f} |"
        )
    lines += ["", f"Retention (student / teacher): **{record['retention_percent']:.1f}%**.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = [round(x, 2) for x in os.getloadavg()]
    summary, seconds, command = run_demo(args.sets)
    metric = summary["primary_metric"]
    retention = 100 * summary["student"]["metrics"][metric] / summary["teacher"]["metrics"][metric]
    record = {
        "name": args.name,
        "command": " ".join(["OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "(unset)"), *sys.argv]),
        "run_command": " ".join(command),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()},
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "wall_seconds": seconds,
        "retention_percent": retention,
        "summary": summary,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(record, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(markdown(record))
    print(markdown(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
