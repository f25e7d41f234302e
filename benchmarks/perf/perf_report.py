"""The perf benchmark's Markdown tables and its MLflow run."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def markdown(result: dict[str, Any]) -> str:
    """Tables per model: costs and decomposition; latency ratios vs dense; training; int8; ONNX; GPU."""
    lines = [
        "# Dense vs compressed: performance",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}; machine: {result['machine']}; {result['seq_len']} tokens per sequence.",
        "Latency: median ms of interleaved rounds (speed-up = dense median / variant median, same block);",
        "the load average of each block is in the JSON.",
    ]
    for model, section in result["models"].items():
        lines += ["", f"## {model}", "", *_costs(section["variants"])]
        lines += ["", *_ratios("Inference latency", section["latency"])]
        if "training" in section:
            lines += [
                "",
                *_ratios("Training steps (dense finetune = 1.00)", section["training"], "dense finetune"),
            ]
        if "int8" in section:
            lines += ["", *_ratios("Dynamic int8 (compresskit.quantize_dynamic)", section["int8"])]
        if "onnx" in section:
            onnx = {k: v for k, v in section["onnx"].items() if k.startswith("latency_")}
            lines += ["", *_ratios("ONNX Runtime CPU", onnx)]
            sizes = {k: v for k, v in section["onnx"].items() if not k.startswith("latency_")}
            lines += ["", "ONNX files: " + "; ".join(f"{k}: {v}" for k, v in sizes.items())]
        if "gpu" in section:
            lines += ["", f"GPU: {section['gpu']}"]
    return "\n".join(lines) + "\n"


def _costs(variants: dict[str, Any]) -> list[str]:
    head = (
        "| strategy | params | size MB | FLOPs linear | FLOPs counted | plan s | build s | decomp. peak MB |"
    )
    rows = [head, "|" + "---|" * 8]
    for name, v in variants.items():
        if "error" in v:
            rows.append(f"| {name} | {v['error']} |" + " |" * 6)
            continue
        rows.append(
            f"| {name} | {v['params']:,} | {v['size_mb']:.1f} | {v['flops_linear'] / 1e9:.2f}G | "
            f"{v['flops_counted'] / 1e9:.2f}G | {v.get('plan_s', '')} | {v.get('build_s', '')} | "
            f"{v.get('decompose_peak_mb', '')} |"
        )
    return rows


def _ratios(title: str, blocks: dict[str, Any], reference: str = "dense") -> list[str]:
    names: list[str] = []
    for block in blocks.values():
        names += [n for n in block if n not in names]
    rows = [f"**{title}**", "", "| setting | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for setting, block in blocks.items():
        base = block.get(reference, {}).get("median_ms")
        cells = []
        for name in names:
            cell = block.get(name, {})
            if "median_ms" not in cell:
                cells.append(str(cell.get("error", "—")))
            elif base:
                cells.append(f"{cell['median_ms']:.1f} ms ({base / cell['median_ms']:.2f}×)")
            else:
                cells.append(f"{cell['median_ms']:.1f} ms")
        rows.append(f"| {setting} | " + " | ".join(cells) + " |")
    return rows


def log_mlflow(uri: str, name: str, result: dict[str, Any], files: list[Path]) -> None:
    """One MLflow run (experiment ``compresskit-perf``): medians as metrics, the files as artifacts."""
    try:
        import mlflow
    except ImportError:
        print("mlflow is not installed: results not logged to MLflow")
        return
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("compresskit-perf")
    with mlflow.start_run(run_name=name):
        mlflow.log_param("command", result["command"][:500])
        for model, section in result["models"].items():
            for variant, info in section["variants"].items():
                for key in ("params", "size_mb", "flops_linear", "decompose_s"):
                    if key in info:
                        mlflow.log_metric(_key(f"{model}/{variant}/{key}"), float(info[key]))
            for setting, block in section["latency"].items():
                for variant, cell in block.items():
                    if "median_ms" in cell:
                        mlflow.log_metric(_key(f"{model}/{variant}/latency_{setting}_ms"), cell["median_ms"])
        for path in files:
            mlflow.log_artifact(str(path))
    print(f"logged to MLflow at {uri} (experiment compresskit-perf)")


def _key(text: str) -> str:
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in text)
