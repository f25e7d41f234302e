"""Performance of dense vs compressed models: size, FLOPs, latency, memory, decomposition and training time.

One command writes ``benchmarks/results/<name>.json`` and ``<name>.md`` and logs them to MLflow:

    .venv/bin/python benchmarks/perf/run.py --models bert-base,minilm-l6 --threads 1,2 --batches 1,32 \\
        --rounds 20 --training --onnx --int8 --name perf_cpu

Quick check at reduced size: ``--models tiny --batches 1,4 --rounds 3`` (or ``--layers 2`` on a real model).

Per model and strategy (``perf_variants.py``): parameters, size on disk (the saved folder), FLOPs
(analytic: linear layers at ``--seq-len`` tokens, the paper's convention; and every matmul of one forward
at batch 1 counted by ``torch.utils.flop_counter``), decomposition time (plan / build) and its peak
resident memory above the loaded model (each variant built in its own child process). Then, in this
process, the saved variants are reloaded and timed interleaved (dense, kb8, kb21, dense, ... per round):
inference latency at each batch × ``--seq-len`` tokens and thread count (median, p10, p90, load average);
``--training``: one AdamW step of the dense model (fine-tuning) and of each student, alone and as a KD
step with the dense teacher's forward; ``--onnx``: ONNX Runtime CPU latency of the exported model;
``--int8``: latency of ``compresskit.quantize_dynamic`` and size of the int8 ONNX file. ``--device
cuda``: bf16 throughput at ``--gpu-batch`` (eager and ``torch.compile``) beside the bytes-moved bound
(weight bytes / ``--hbm-gbps``); without a visible GPU that section says so and the rest is produced.
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

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results"
sys.path.insert(0, str(HERE))

from perf_timing import forward, interleaved_ms, train_step  # noqa: E402
from perf_variants import STRATEGIES, load_variant  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--models", default="bert-base,minilm-l6")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--layers", type=int, default=0, help="keep only the first N layers (0: all)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--training", action="store_true", help="time training and KD steps too")
    parser.add_argument("--train-batch", default="16x64", help="batch x tokens of the training steps")
    parser.add_argument("--onnx", action="store_true", help="ONNX Runtime latency of the exported models")
    parser.add_argument("--int8", action="store_true", help="dynamic int8: torch latency, ONNX int8 size")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--gpu-batch", type=int, default=256)
    parser.add_argument("--hbm-gbps", type=float, default=4800.0, help="memory bandwidth for the bound")
    parser.add_argument("--name", default="perf_cpu")
    parser.add_argument("--tracking-uri", default="sqlite:///runs/perf/mlflow.db")
    return parser.parse_args(argv)


def build_all(args: argparse.Namespace, model: str, strategies: list[str], root: Path) -> dict[str, Any]:
    """Each variant built and saved by its own child process (its peak memory is its own)."""
    built: dict[str, Any] = {}
    for strategy in strategies:
        folder = root / f"{model}-{strategy}"
        command = [sys.executable, str(HERE / "perf_variants.py"), model, strategy, str(args.layers),
                   str(folder), str(args.seq_len)]  # fmt: skip
        done = subprocess.run(
            command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"}
        )
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            built[strategy] = {"error": f"build failed: {tail[0][:300]}"}
            print(f"  {model} {strategy}: build failed: {tail[0][:300]}", flush=True)
            continue
        built[strategy] = {**json.loads(done.stdout.strip().splitlines()[-1]), "folder": str(folder)}
        print(f"  built {model} {strategy}: {built[strategy].get('decompose_s', 0)} s", flush=True)
    return built


def latency(args: argparse.Namespace, models: dict[str, Any], vocab: int) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for threads in _ints(args.threads):
        torch.set_num_threads(threads)
        for batch in _ints(args.batches):
            too_big = _does_not_fit(next(iter(models.values())), batch, args.seq_len)
            if too_big:
                print(f"  batch {batch}: {too_big}", flush=True)
                table[f"b{batch}_t{threads}"] = {name: {"error": too_big} for name in models}
                continue
            ids = torch.randint(
                0, vocab, (batch, args.seq_len), generator=torch.Generator().manual_seed(batch)
            )
            runs = {name: forward(m, ids) for name, m in models.items()}
            table[f"b{batch}_t{threads}"] = interleaved_ms(runs, args.rounds)
            print(f"  latency batch {batch} threads {threads} done", flush=True)
    return table


def training(args: argparse.Namespace, models: dict[str, Any], vocab: int) -> dict[str, Any]:
    batch, tokens = (int(v) for v in args.train_batch.split("x"))
    ids = torch.randint(0, vocab, (batch, tokens), generator=torch.Generator().manual_seed(0))
    teacher = models["dense"]
    runs = {"dense finetune": train_step(_copy(teacher), ids, None)}
    for name, model in models.items():
        if name != "dense":
            runs[f"{name} step"] = train_step(model, ids, None)
            runs[f"{name} KD step"] = train_step(model, ids, teacher)
    out: dict[str, Any] = {}
    for threads in _ints(args.threads):
        torch.set_num_threads(threads)
        out[f"t{threads}"] = interleaved_ms(runs, max(3, args.rounds // 4), warmup=1)
    return out


def onnx_section(args: argparse.Namespace, models: dict[str, Any], vocab: int, root: Path) -> dict[str, Any]:
    from compresskit import export_onnx
    from compresskit.plugin import ort_session

    out: dict[str, Any] = {}
    sessions = {}
    for name, model in models.items():
        try:
            result = export_onnx(model, root / f"{name}.onnx", quantize="int8" if args.int8 else None)
        except Exception as exc:  # one failed export must not lose the table
            out[name] = {"error": f"export failed: {str(exc).splitlines()[0][:300]}"}
            continue
        out[name] = {"max_abs_diff": result.max_abs_diff, "size_mb": Path(result.path).stat().st_size / 1e6}
        if result.quantized_path:
            out[name]["int8_size_mb"] = Path(result.quantized_path).stat().st_size / 1e6
        sessions[name] = result.path
    for threads in _ints(args.threads):
        for batch in _ints(args.batches):
            ids = torch.randint(0, vocab, (batch, args.seq_len)).numpy()
            runs = {}
            for name, path in sessions.items():
                session = ort_session(path, threads)
                feeds = {i.name: ids if i.name == "input_ids" else (ids * 0 + (i.name == "attention_mask"))
                         for i in session.get_inputs()}  # fmt: skip
                runs[name] = lambda s=session, f=feeds: s.run(None, f)
            out[f"latency_b{batch}_t{threads}"] = interleaved_ms(runs, args.rounds)
    return out


def int8_section(args: argparse.Namespace, models: dict[str, Any], vocab: int) -> dict[str, Any]:
    import compresskit

    quantized = {f"{name} int8": compresskit.quantize_dynamic(m) for name, m in models.items()}
    out: dict[str, Any] = {}
    for threads in _ints(args.threads):
        torch.set_num_threads(threads)
        for batch in _ints(args.batches):
            ids = torch.randint(0, vocab, (batch, args.seq_len))
            runs = {
                **{n: forward(m, ids) for n, m in models.items()},
                **{n: forward(m, ids) for n, m in quantized.items()},
            }
            out[f"b{batch}_t{threads}"] = interleaved_ms(runs, args.rounds)
    return out


def gpu_section(args: argparse.Namespace, models: dict[str, Any], vocab: int) -> dict[str, Any]:
    if not torch.cuda.is_available():
        message = "skipped: --device cuda but torch sees no CUDA device (torch.cuda.is_available() is False)"
        print(f"  {message}", flush=True)
        return {"skipped": message}
    out: dict[str, Any] = {}
    ids = torch.randint(0, vocab, (args.gpu_batch, args.seq_len), device="cuda")
    for name, model in models.items():
        gpu = _copy(model).to("cuda", torch.bfloat16).eval()
        weight_bytes = sum(p.numel() * p.element_size() for p in gpu.parameters())
        row: dict[str, Any] = {"bound_ms": weight_bytes / (args.hbm_gbps * 1e9) * 1e3}
        for mode, runner in (("eager", gpu), ("compile", torch.compile(gpu))):
            try:
                row[mode] = _cuda_ms(runner, ids, args.rounds)
                row[f"{mode}_seq_per_s"] = args.gpu_batch / row[mode] * 1e3
            except (torch.OutOfMemoryError, RuntimeError) as exc:
                row[mode] = f"failed: {str(exc).splitlines()[0][:200]}"
        out[name] = row
    return out


def _cuda_ms(model: Any, ids: torch.Tensor, rounds: int) -> float:
    with torch.inference_mode():
        for _ in range(3):
            model(input_ids=ids)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(rounds):
            model(input_ids=ids)
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / rounds * 1e3


def _does_not_fit(model: Any, batch: int, seq_len: int) -> str | None:
    """A message when one forward's activations (estimate) exceed 80% of the available memory."""
    config = model.config
    floats = batch * seq_len * (config.hidden_size * 12 + config.num_attention_heads * seq_len * 2)
    need = floats * 4 * 2  # float32, two layers' worth alive at once
    available = _available_bytes()
    if available is not None and need > 0.8 * available:
        return (
            f"skipped: batch {batch} x {seq_len} tokens needs about {need / 1e9:.1f} GB of activations, "
            f"{available / 1e9:.1f} GB available; lower --batches or --seq-len"
        )
    return None


def _available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _copy(model: Any) -> Any:
    import copy

    return copy.deepcopy(model)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from perf_report import log_mlflow, markdown

    strategies = [s for s in args.strategies.split(",") if s]
    if "dense" not in strategies:
        strategies.insert(0, "dense")
    result: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "load_avg_at_start": os.getloadavg(),
        },
        "seq_len": args.seq_len,
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="compresskit-perf-") as tmp:
        for model_name in [m for m in args.models.split(",") if m]:
            print(f"{model_name}: building {', '.join(strategies)}", flush=True)
            built = build_all(args, model_name, strategies, Path(tmp))
            loaded = {s: load_variant(model_name, s, args.layers or None, b["folder"])
                      for s, b in built.items() if "error" not in b}  # fmt: skip
            vocab = int(next(iter(loaded.values())).config.vocab_size)
            section: dict[str, Any] = {"variants": built, "latency": latency(args, loaded, vocab)}
            if args.training and "dense" in loaded:
                section["training"] = training(args, loaded, vocab)
            if args.int8:
                section["int8"] = int8_section(args, loaded, vocab)
            if args.onnx:
                section["onnx"] = onnx_section(args, loaded, vocab, Path(tmp))
            if args.device == "cuda":
                section["gpu"] = gpu_section(args, loaded, vocab)
            result["models"][model_name] = section
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path, md_path = RESULTS / f"{args.name}.json", RESULTS / f"{args.name}.md"
    json_path.write_text(json.dumps(result, indent=1))
    md_path.write_text(markdown(result))
    log_mlflow(args.tracking_uri, args.name, result, [json_path, md_path])
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
