"""Dense vs compressed: parameters, FLOPs, size on disk, CPU latency, throughput and peak memory.

For each variant (``dense`` or a preset / decomposition of the walker) one child process loads the
teacher as a sequence classifier, decomposes it with :func:`compresskit.decompose` (no distillation:
speed and size do not depend on the weights' values) and saves it with :func:`compresskit.save`; a
second, fresh child process reloads it with :func:`compresskit.load` and measures it with
:func:`compresskit.measure_model`, so the process's peak resident set belongs to that variant alone.

    python benchmarks/measure_latency.py --teacher default --variants dense,kroneckerbert8,kroneckerbert21 \
        --seq-len 128 --batch-sizes 1,8 --threads 1 --repeats 20 --name latency_minilm_cpu

writes ``benchmarks/results/<name>.json`` and ``benchmarks/results/<name>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--teacher", default="default", help="model folder, or 'default' (MiniLM-L6)")
    parser.add_argument("--variants", default="dense,kroneckerbert8,kroneckerbert21,kroneckerbert5")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--name", default="latency_minilm_cpu", help="results file stem")
    parser.add_argument("--build", help=argparse.SUPPRESS)  # internal: build one variant into --folder
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure the saved --folder
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def teacher_path(teacher: str) -> str:
    if teacher == "default":
        from compresskit.plugin import default_teacher_path

        return str(default_teacher_path())
    return teacher


def build_variant(args: argparse.Namespace, variant: str, folder: str) -> dict[str, Any]:
    """Decompose the teacher with ``variant`` and save it; return params and theoretical FLOPs."""
    import torch
    from transformers import AutoModelForSequenceClassification

    import compresskit
    from compresskit.plugin import count_parameters, dense_model_flops

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(teacher_path(args.teacher), num_labels=2)
    info = {"dense_params": count_parameters(model), "flops": dense_model_flops(model, args.seq_len)}
    info["replaced_modules"] = 0
    if variant != "dense":
        report = compresskit.decompose(model, variant, tokens=args.seq_len)
        info["flops"] += report.plan.after.flops - report.plan.before.flops
        info["replaced_modules"] = len(report.plan.modules)
    compresskit.save(model, folder)
    return info


def measure_variant(args: argparse.Namespace, folder: str, info: dict[str, Any]) -> dict[str, Any]:
    """Reload the saved variant and measure it at each batch size (runs in a fresh child process)."""
    import compresskit

    model = compresskit.load(folder).to(args.device)
    return {
        str(batch): compresskit.measure_model(
            model,
            seq_len=args.seq_len,
            batch_size=batch,
            warmup=args.warmup,
            repeats=args.repeats,
            threads=args.threads,
            saved_dir=folder,
            flops=info["flops"],
            reference_params=info["dense_params"],
        )
        for batch in (int(b) for b in args.batch_sizes.split(","))
    }


def run_child(args: argparse.Namespace, *extra: str) -> Any:
    """Run this script with ``extra`` arguments in a fresh interpreter; return its last JSON line."""
    command = [sys.executable, __file__, *extra, *forwarded(args)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(extra)} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_variant(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        info = run_child(args, "--build", variant, "--folder", folder)
        measured = run_child(args, "--one", json.dumps(info), "--folder", folder)
    return {"variant": variant, "replaced_modules": info["replaced_modules"], "by_batch_size": measured}


def forwarded(args: argparse.Namespace) -> list[str]:
    return [
        *("--teacher", args.teacher, "--seq-len", str(args.seq_len), "--batch-sizes", args.batch_sizes),
        *("--threads", str(args.threads), "--warmup", str(args.warmup), "--repeats", str(args.repeats)),
        *("--device", args.device),
    ]


def markdown(results: dict[str, Any]) -> str:
    """One row per variant and batch size, in the layout of the paper's Table 1 plus measured columns."""
    setup = results["setup"]
    lines = [
        f"# {results['name']}: dense vs compressed, measured on {setup['device']}",
        "",
        f"Teacher `{setup['teacher']}`, {setup['seq_len']} tokens, {setup['threads']} thread(s), "
        f"{setup['warmup']} warm-up + {setup['repeats']} timed forwards; load average at start "
        f"{setup['load_average']}. No distillation (speed and size do not depend on weight values).",
        "",
        "| variant | batch | params | CF | size MB | GFLOPs | median ms | p90 ms | seq/s | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["variants"]:
        for batch, m in row["by_batch_size"].items():
            lat = m["latency"]
            cells = [
                row["variant"],
                batch,
                f"{m['params']:,}",
                f"{m['compression_factor']:.1f}x",
                f"{m['size_mb']:.1f}",
                f"{m['flops'] / 1e9:.2f}",
                f"{lat['median_ms']:.1f}",
                f"{lat['p90_ms']:.1f}",
                f"{lat['throughput_per_s']:.1f}",
                f"{lat['process_peak_mb']:.0f}",
            ]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "Command: `" + results["command"] + "`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.build:
        print(json.dumps(build_variant(args, args.build, args.folder)))
        return 0
    if args.one:
        print(json.dumps(measure_variant(args, args.folder, json.loads(args.one))))
        return 0
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    setup = {
        "teacher": args.teacher,
        "seq_len": args.seq_len,
        "batch_sizes": args.batch_sizes,
        "threads": args.threads,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "device": args.device,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "started": started,
    }
    variants = []
    for variant in args.variants.split(","):
        print(f"measuring {variant} ...", file=sys.stderr)
        variants.append(run_variant(args, variant))
    command = "python benchmarks/measure_latency.py " + " ".join(
        [f"--variants {args.variants}", *forwarded(args), f"--name {args.name}"]
    )
    results = {"name": args.name, "setup": setup, "command": command, "variants": variants}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
