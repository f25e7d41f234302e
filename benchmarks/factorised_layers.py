"""Reconstruction error, initialisation time and CPU latency of the low-rank and tensorly layers.

On the real MiniLM-L6 weights (layer 0: attention query 384×384, FFN in 1536×384, FFN out 384×1536),
each of ``low_rank``, ``tucker``, ``cp`` and ``tensor_train`` is built at the same parameter budget
(``param_ratio``, default 0.25 = 4× fewer weights) and reports: parameters and FLOPs (paper convention,
per 128-token sequence), the relative error ‖W − Ŵ‖_F/‖W‖_F, the initialisation time (SVD / HOOI /
CP-ALS / TT-SVD) and the median forward time on a batch of ``--batch`` × 128 tokens against the dense
layer. ``low_rank`` is timed with both SVD back ends. Writes
``benchmarks/results/factorised_layers.{json,md}``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/factorised_layers.py [--threads 1] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModel

from compresskit import Registry, dense_cost
from compresskit.plugin import default_teacher_path

RESULTS = Path(__file__).resolve().parent / "results" / "factorised_layers.json"
MATRICES = {
    "attention_query": "encoder.layer.0.attention.self.query",
    "ffn_in": "encoder.layer.0.intermediate.dense",
    "ffn_out": "encoder.layer.0.output.dense",
}
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("low_rank", {"svd": "torch"}),
    ("low_rank", {"svd": "scipy"}),
    ("tucker", {}),
    ("cp", {}),
    ("tensor_train", {}),
]
TOKENS = 128


def median_ms(module: nn.Module, x: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        module(x)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            module(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def measure(param_ratio: float, batch: int, repeats: int) -> list[dict[str, Any]]:
    registry = Registry.from_plugins()
    model = AutoModel.from_pretrained(default_teacher_path())
    modules = dict(model.named_modules())
    rows = []
    for label, path in MATRICES.items():
        dense = modules[path]
        weight = dense.weight.detach()
        x = torch.randn(batch, TOKENS, dense.in_features, generator=torch.Generator().manual_seed(0))
        dense_ms = median_ms(dense, x, repeats)
        before = dense_cost(dense, TOKENS)
        for name, extra in VARIANTS:
            decomposition = registry.create("decomposition", name, {"param_ratio": param_ratio, **extra})
            spec = decomposition.make_spec(dense, path)
            start = time.perf_counter()
            layer = decomposition.build(dense, spec)
            init_s = time.perf_counter() - start
            after = decomposition.compressed_cost(dense, spec, TOKENS)
            with torch.no_grad():
                error = float(torch.linalg.norm(weight - layer.dense_weight()) / torch.linalg.norm(weight))
            ms = median_ms(layer, x, repeats)
            rows.append(
                {
                    "matrix": label,
                    "shape": list(weight.shape),
                    "decomposition": name,
                    "options": {"param_ratio": param_ratio, **extra},
                    "spec": spec,
                    "params_dense": before.params,
                    "params": after.params,
                    "flops_dense": before.flops,
                    "flops": after.flops,
                    "relative_error": round(error, 4),
                    "init_s": round(init_s, 3),
                    "ms_dense": round(dense_ms, 3),
                    "ms": round(ms, 3),
                    "speedup": round(dense_ms / ms, 3),
                }
            )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| matrix | decomposition | params (dense) | FLOPs ratio | rel. error | init s | ms (dense) "
        "| speedup |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = r["decomposition"] + (f" ({r['options']['svd']})" if "svd" in r["options"] else "")
        lines.append(
            f"| {r['matrix']} {r['shape'][0]}x{r['shape'][1]} | {name} | {r['params']:,} "
            f"({r['params_dense']:,}) | {r['flops'] / r['flops_dense']:.3f} | {r['relative_error']} | "
            f"{r['init_s']} | {r['ms']} ({r['ms_dense']}) | {r['speedup']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--param-ratio", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = measure(args.param_ratio, args.batch, args.repeats)
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "torch": torch.__version__,
            "threads": args.threads,
            "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg(),
            "platform": platform.platform(),
        },
        "tokens": TOKENS,
        "batch": args.batch,
        "rows": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    RESULTS.with_suffix(".md").write_text(f"`{result['command']}`\n\n{table(rows)}\n")
    print(table(rows))


if __name__ == "__main__":
    main()
