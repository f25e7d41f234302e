"""CPU latency of dense vs Kronecker layers for the KroneckerBERT8 / 21 per-matrix shapes.

For BERT-base (hidden 768, FFN 3072) and MiniLM-L6 (hidden 384, FFN 1536) dimensions, every matrix the
presets replace (attention Q/K/V/O, FFN in, FFN out) is timed as a dense ``nn.Linear`` and as the
``KroneckerLinear`` the preset builds, on a batch of 32 sequences × 128 tokens (forward only, no grad,
median of ``--repeats`` runs after a warm-up). Parameters and FLOPs (paper convention, 128 tokens per
sequence, per sequence) sit beside the measured times. Writes ``benchmarks/results/kronecker_layers.json``
and prints a Markdown table.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/kronecker_layers.py [--threads 2] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from compresskit_plugins.kronecker import Kronecker, KroneckerBert8, KroneckerBert21
from torch import nn

from compresskit import dense_cost

RESULTS = Path(__file__).resolve().parent / "results" / "kronecker_layers.json"
MODELS = {"bert-base": (768, 3072), "minilm-l6": (384, 1536)}
PRESETS = {"kb8": KroneckerBert8, "kb21": KroneckerBert21}


def matrices(hidden: int, ffn: int) -> dict[str, tuple[int, int]]:
    """Group name -> (out, in) of the matrix that group replaces."""
    return {"attention": (hidden, hidden), "ffn_in": (ffn, hidden), "ffn_out": (hidden, ffn)}


def median_ms(module: nn.Module, x: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        module(x)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            module(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def measure(batch: int, tokens: int, repeats: int) -> list[dict[str, Any]]:
    rows = []
    torch.manual_seed(0)
    for model, (hidden, ffn) in MODELS.items():
        for group, (out_features, in_features) in matrices(hidden, ffn).items():
            dense = nn.Linear(in_features, out_features)
            x = torch.randn(batch, tokens, in_features)
            dense_ms = median_ms(dense, x, repeats)
            for preset, cls in PRESETS.items():
                options = next(g["options"] for g in cls.groups if g["name"] == group)
                kron = Kronecker(options)
                spec = kron.make_spec(dense, f"{model}.{group}")
                layer = kron.build(dense, spec)
                before, after = dense_cost(dense, tokens), kron.compressed_cost(dense, spec, tokens)
                kron_ms = median_ms(layer, x, repeats)
                rows.append(
                    {
                        "model": model,
                        "matrix": group,
                        "shape": [out_features, in_features],
                        "preset": preset,
                        "a_shape": spec["a_shape"],
                        "b_shape": spec["b_shape"],
                        "order": layer.order,  # type: ignore[union-attr]
                        "params_dense": before.params,
                        "params_kron": after.params,
                        "flops_dense": before.flops,
                        "flops_kron": after.flops,
                        "ms_dense": round(dense_ms, 3),
                        "ms_kron": round(kron_ms, 3),
                        "speedup": round(dense_ms / kron_ms, 3),
                    }
                )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    head = (
        "| model | matrix | preset | A ⊗ B | params dense → kron | GFLOPs dense → kron "
        "| ms dense | ms kron | speed-up |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['matrix']} {r['shape'][0]}×{r['shape'][1]} | {r['preset']} | "
            f"{r['a_shape'][0]}×{r['a_shape'][1]} ⊗ {r['b_shape'][0]}×{r['b_shape'][1]} | "
            f"{r['params_dense']:,} → {r['params_kron']:,} | "
            f"{r['flops_dense'] / 1e9:.3f} → {r['flops_kron'] / 1e9:.4f} | "
            f"{r['ms_dense']:.2f} | {r['ms_kron']:.2f} | {r['speedup']:.2f}× |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = measure(args.batch, args.tokens, args.repeats)
    result = {
        "benchmark": "kronecker_layers",
        "what": "forward latency, dense nn.Linear vs KroneckerLinear, median of repeats (ms)",
        "batch": args.batch,
        "tokens": args.tokens,
        "flops_per": f"{args.tokens} tokens (one sequence), paper convention",
        "threads": args.threads,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "note": "shared 2-core CPU; other jobs were running, so treat times as indicative",
        "rows": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(rows))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
