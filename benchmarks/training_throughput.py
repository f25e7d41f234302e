"""Training throughput of every stage of a strategy: teacher fine-tuning, KD stage 1, KD stage 2.

Runs the real pipeline (``compresskit.compress``) on a config with each training stage cut to
``--steps`` optimizer steps, once per variant (a list of ``--set`` overrides), and reads the throughput
the Trainer measured for each stage (examples/s, real tokens/s, padding fraction; data loading,
forward, backward and optimizer included, evaluation and checkpoints excluded). Variants run in
interleaved rounds so a change of machine load hits them alike; the table gives the median of the
rounds.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/training_throughput.py --steps 30 --rounds 2 \\
        --variant 'random=finetune.group_by_length=false,steps[1].data.stage2.group_by_length=false' \\
        --variant grouped= --name training_throughput_minilm_cpu

Results: ``benchmarks/results/<name>.{json,md}`` with the command, machine and load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CONFIG = ROOT / "configs" / "demo-minilm-sst2.toml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per training stage")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of all variants")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME=OVERRIDE,OVERRIDE,... (comma-separated --set values; empty for the config as is)",
    )
    parser.add_argument("--set", dest="extra", action="append", default=[], help="override for all variants")
    parser.add_argument("--name", default="training_throughput_minilm_cpu")
    return parser.parse_args(argv)


def base_overrides(steps: int) -> list[str]:
    """Cut each training stage to ``steps`` steps on the full training sets; keep the rest small."""
    return [
        "finetune.train_limit=67349",
        f"finetune.training.max_steps={steps}",
        "finetune.training.checkpoint_every=1000000",
        "steps[1].data.stage1.limit=100000",
        f"steps[1].options.stage1.training.max_steps={steps}",
        "steps[1].data.stage2.limit=67349",
        f"steps[1].options.stage2.training.max_steps={steps}",
        "steps[1].options.stage2.training.checkpoint_every=1000000",
        "evaluation.limit=64",
        "measure.repeats=1",
        "measure.warmup=0",
        'tracking.tracker="none"',
    ]


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, rest = text.partition("=")
    return name, [item for item in split_overrides(rest) if item]


def split_overrides(text: str) -> list[str]:
    """Split ``a=1,b[0].c=2`` on the commas that start a new ``key=`` (values may hold commas)."""
    parts: list[str] = []
    for piece in text.split(","):
        if parts and "=" not in piece:
            parts[-1] += "," + piece
        else:
            parts.append(piece)
    return parts


def stage_throughput(run_dir: Path) -> dict[str, dict[str, float]]:
    stages = json.loads((run_dir / "state.json").read_text())["stages"]
    found = {"finetune": stages["teacher"]["result"].get("throughput", {})}
    for key, record in stages.items():
        if key.endswith(":distill"):
            for stage, result in record["result"]["result"].items():
                if isinstance(result, dict) and "throughput" in result:
                    found[stage] = result["throughput"]
    return found


def run_variant(config: str, overrides: list[str]) -> dict[str, dict[str, float]]:
    import compresskit

    strategy = compresskit.Strategy.from_file(config, overrides)
    with tempfile.TemporaryDirectory(prefix="ck-throughput-") as folder:
        from compresskit.plugin import Pipeline

        Pipeline(strategy, output_dir=Path(folder) / "run", progress=False, echo=lambda _: None).run()
        return stage_throughput(Path(folder) / "run")


def machine() -> dict[str, Any]:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "load_average": os.getloadavg(),
    }


def to_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# {result['name']}: training throughput per stage",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}; machine: {result['machine']}; load average before/after: "
        f"{result['load_before']} / {result['machine']['load_average']}",
        "",
        "| variant | stage | examples/s | real tokens/s | padding | rounds |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for variant, stages in result["median"].items():
        for stage, numbers in stages.items():
            lines.append(
                f"| {variant} | {stage} | {numbers['examples_per_second']:.1f} | "
                f"{numbers['tokens_per_second']:.0f} | {numbers['padding']:.1%} | {result['rounds']} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    variants = dict(parse_variant(v) for v in args.variant) or {"config": []}
    load_before = os.getloadavg()
    rounds: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name in variants}
    for index in range(args.rounds):
        for name, overrides in variants.items():
            numbers = run_variant(args.config, base_overrides(args.steps) + args.extra + overrides)
            rounds[name].append(numbers)
            print(f"round {index + 1} {name}: {json.dumps(numbers)}", flush=True)
    median = {
        name: {
            stage: {
                key: statistics.median(r[stage][key] for r in runs)
                for key in ("examples_per_second", "tokens_per_second", "padding")
            }
            for stage in runs[0]
        }
        for name, runs in rounds.items()
    }
    result = {
        "name": args.name,
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_before": load_before,
        "machine": machine(),
        "steps": args.steps,
        "rounds": args.rounds,
        "variants": variants,
        "runs": rounds,
        "median": median,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(to_markdown(result))
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
