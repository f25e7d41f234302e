"""Measure a model as it really runs: parameters, size on disk, FLOPs, latency, throughput, peak memory.

Counting FLOPs is not enough ("it is compressed but not faster" is the commonest complaint about
compression tools), so every run reports measured numbers beside the theoretical ones.

Conventions, shared with the MLflow tracker, ``compresskit compare`` and the benchmarks:

- parameters: ``numel`` of every distinct parameter (tied weights counted once);
- FLOPs: linear maps only, ``(2n - 1)·m`` per token for a dense m×n matrix, at ``seq_len`` tokens
  (KroneckerBERT, Tahaei et al. 2022, §3.2.3); a compression plan's own cost is used when given;
- size on disk: the sum of the file sizes of a saved folder, in MB (10^6 bytes);
- latency: ``warmup`` untimed forwards, then the median and 90th percentile of ``repeats`` timed
  forwards of a ``batch_size × seq_len`` batch, with the thread count recorded;
- throughput: sequences per second at the median latency, ``batch_size / median``;
- peak memory: on CUDA ``torch.cuda.max_memory_allocated`` during the timed forwards; on CPU the growth
  of the process's peak resident set (``ru_maxrss``) during them, which is 0 when the process had
  already peaked higher before. ``process_peak_mb`` is the whole process's peak resident set (CPU) or
  ``torch.cuda.max_memory_reserved`` (CUDA): measure in a fresh process that only loads the model
  (as ``benchmarks/measure_latency.py`` does) for a clean number.

Metric names below (:data:`METRIC_PARAMS`, ...) are the keys runs log, so that ``compare`` reads what
the pipeline and the benchmarks write. Task metrics are logged as ``student/<metric>`` and the
teacher's as ``teacher/<metric>`` (:data:`STUDENT_PREFIX`, :data:`TEACHER_PREFIX`).
"""

from __future__ import annotations

import math
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compresskit.decomposition import DEFAULT_TOKENS, class_names, dense_linear_flops, linear_shape
from compresskit.errors import ConfigError

#: Prefix of the student's task metrics (``student/accuracy``) in a tracked run.
STUDENT_PREFIX = "student/"
#: Prefix of the teacher's task metrics (``teacher/accuracy``), logged in the same run.
TEACHER_PREFIX = "teacher/"
#: Final-metric keys written by :func:`measurement_metrics`.
METRIC_PARAMS = "params"
METRIC_FLOPS = "flops"
METRIC_COMPRESSION = "compression_factor"
METRIC_SIZE_MB = "size_mb"
METRIC_LATENCY_MS = "latency_ms"
METRIC_LATENCY_P90_MS = "latency_p90_ms"
METRIC_THROUGHPUT = "throughput_per_s"
METRIC_PEAK_MEMORY_MB = "peak_memory_mb"
METRIC_PROCESS_PEAK_MB = "process_peak_mb"
#: Every measurement name above (a ``teacher/`` prefixed one is the teacher's measurement, not a task metric).
MEASUREMENT_METRICS = frozenset(
    {
        METRIC_PARAMS,
        METRIC_FLOPS,
        METRIC_COMPRESSION,
        METRIC_SIZE_MB,
        METRIC_LATENCY_MS,
        METRIC_LATENCY_P90_MS,
        METRIC_THROUGHPUT,
        METRIC_PEAK_MEMORY_MB,
        METRIC_PROCESS_PEAK_MB,
    }
)

Inputs = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class LatencyResult:
    """Timing of ``repeats`` forwards of one ``batch_size × seq_len`` batch (milliseconds)."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    repeats: int
    warmup: int
    batch_size: int
    seq_len: int
    threads: int
    device: str
    peak_memory_mb: float
    process_peak_mb: float = 0.0

    @property
    def throughput_per_s(self) -> float:
        """Sequences per second at the median latency: ``batch_size / (median_ms / 1000)``."""
        return self.batch_size * 1000.0 / self.median_ms if self.median_ms > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "throughput_per_s": self.throughput_per_s}


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of scalars in the distinct parameters of ``model`` (shared tensors counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


#: Files holding a model's tensors; a saved folder's tokenizer, config and card are not the model's size.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".gguf")


def size_on_disk_mb(folder: str | Path) -> float:
    """Total size of the weight files (``WEIGHT_SUFFIXES``) under ``folder`` (recursively), in MB (10^6
    bytes); a file path counts that file. Tokenizer, config and model card files are left out, so a
    folder saved with its tokenizer measures the same as one without."""
    root = Path(folder)
    if not root.exists():
        raise ConfigError(f"size_on_disk_mb: {root} does not exist; save the model there first.")
    files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files if root.is_file() or p.suffix in WEIGHT_SUFFIXES) / 1e6


def dense_model_flops(model: nn.Module, tokens: int = DEFAULT_TOKENS) -> int:
    """FLOPs of every ``Linear`` / HF ``Conv1D`` of ``model`` at ``tokens`` tokens: Σ (2n − 1)·m·tokens.

    Modules of other types (embeddings, norms, compressed replacements) count 0 here; pass a compression
    plan's cost to :func:`measure_model` to count compressed modules.
    """
    total = 0
    for module in model.modules():
        names = class_names(module)
        has_weight = isinstance(getattr(module, "weight", None), torch.Tensor)
        if has_weight and ("Linear" in names or "Conv1D" in names):
            out_features, in_features = linear_shape(module)
            total += dense_linear_flops(out_features, in_features, tokens)
    return total


def dummy_inputs(
    model: nn.Module, batch_size: int, seq_len: int, *, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random token ids and an all-ones attention mask for a HF model with ``config.vocab_size``."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if not isinstance(vocab, int):
        raise ConfigError(
            f"measure: {type(model).__name__} has no config.vocab_size; pass inputs={{...}} explicitly."
        )
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch_size, seq_len), generator=generator)
    device = _model_device(model)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


def measure_latency(
    model: nn.Module,
    *,
    inputs: Inputs | None = None,
    batch_size: int = 1,
    seq_len: int = DEFAULT_TOKENS,
    warmup: int = 3,
    repeats: int = 10,
    threads: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> LatencyResult:
    """Time ``repeats`` inference forwards after ``warmup`` untimed ones (see the module docstring)."""
    _check_positive(batch_size=batch_size, seq_len=seq_len, repeats=repeats)
    if warmup < 0:
        raise ConfigError(f"measure: warmup must be >= 0, got {warmup}.")
    batch = dict(inputs) if inputs is not None else dummy_inputs(model, batch_size, seq_len)
    device = _model_device(model)
    was_training = model.training
    model.eval()
    try:
        with _num_threads(threads), torch.inference_mode():
            for _ in range(warmup):
                model(**batch)
            times, peak_mb = _timed_forwards(model, batch, repeats, device, clock)
            used_threads = torch.get_num_threads()
    finally:
        model.train(was_training)
    process_peak = torch.cuda.max_memory_reserved(device) / 2**20 if device.type == "cuda" else _max_rss_mb()
    rows, cols = _batch_shape(batch, batch_size, seq_len)
    return LatencyResult(
        median_ms=statistics.median(times),
        p90_ms=_percentile(times, 90),
        mean_ms=statistics.fmean(times),
        min_ms=min(times),
        repeats=repeats,
        warmup=warmup,
        batch_size=rows,
        seq_len=cols,
        threads=used_threads,
        device=str(device),
        peak_memory_mb=peak_mb,
        process_peak_mb=process_peak,
    )


def measure_model(
    model: nn.Module,
    *,
    seq_len: int = DEFAULT_TOKENS,
    batch_size: int = 1,
    warmup: int = 3,
    repeats: int = 10,
    threads: int | None = None,
    saved_dir: str | Path | None = None,
    flops: int | None = None,
    reference_params: int | None = None,
    inputs: Inputs | None = None,
) -> dict[str, Any]:
    """Parameters, FLOPs, size on disk, latency, throughput and peak memory of ``model`` in one dict.

    ``flops`` is the theoretical cost from a compression plan (``report.after.flops``); without it the
    dense count of :func:`dense_model_flops` is reported and ``flops_source`` says so. ``saved_dir`` is
    the folder the model was saved to (its size is reported); ``reference_params`` (the teacher's
    count) gives the compression factor ``reference_params / params``.
    """
    params = count_parameters(model)
    latency = measure_latency(
        model,
        inputs=inputs,
        batch_size=batch_size,
        seq_len=seq_len,
        warmup=warmup,
        repeats=repeats,
        threads=threads,
    )
    result: dict[str, Any] = {
        "params": params,
        "flops": flops if flops is not None else dense_model_flops(model, latency.seq_len),
        "flops_source": "plan" if flops is not None else "dense linear layers",
        "flops_tokens": latency.seq_len,
        "size_mb": size_on_disk_mb(saved_dir) if saved_dir is not None else None,
        "compression_factor": reference_params / params if reference_params and params else None,
        "latency": latency.to_dict(),
        "environment": environment_info(),
    }
    return result


def measurement_metrics(measurement: Mapping[str, Any]) -> dict[str, float]:
    """The numeric final metrics of a :func:`measure_model` result, under the shared metric names."""
    latency = measurement.get("latency") or {}
    values = {
        METRIC_PARAMS: measurement.get("params"),
        METRIC_FLOPS: measurement.get("flops"),
        METRIC_COMPRESSION: measurement.get("compression_factor"),
        METRIC_SIZE_MB: measurement.get("size_mb"),
        METRIC_LATENCY_MS: latency.get("median_ms"),
        METRIC_LATENCY_P90_MS: latency.get("p90_ms"),
        METRIC_THROUGHPUT: latency.get("throughput_per_s"),
        METRIC_PEAK_MEMORY_MB: latency.get("peak_memory_mb"),
        METRIC_PROCESS_PEAK_MB: latency.get("process_peak_mb"),
    }
    return {key: float(value) for key, value in values.items() if isinstance(value, int | float)}


def environment_info() -> dict[str, Any]:
    """What the numbers depend on: torch version, threads, CPU count, platform."""
    return {
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": sys.platform,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _timed_forwards(
    model: nn.Module, batch: Mapping[str, torch.Tensor], repeats: int, device: torch.device, clock: Any
) -> tuple[list[float], float]:
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _max_rss_mb()
    times = []
    for _ in range(repeats):
        start = clock()
        model(**batch)
        if cuda:
            torch.cuda.synchronize(device)
        times.append((clock() - start) * 1000.0)
    if cuda:
        return times, torch.cuda.max_memory_allocated(device) / 2**20
    return times, max(0.0, _max_rss_mb() - rss_before)


def _max_rss_mb() -> float:
    """Peak resident set of this process in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _percentile(values: list[float], q: float) -> float:
    """Linear-interpolated ``q``-th percentile (numpy's default definition)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@contextmanager
def _num_threads(threads: int | None) -> Iterator[None]:
    previous = torch.get_num_threads()
    if threads is not None:
        _check_positive(threads=threads)
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _model_device(model: nn.Module) -> torch.device:
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def _batch_shape(batch: Mapping[str, torch.Tensor], batch_size: int, seq_len: int) -> tuple[int, int]:
    ids = batch.get("input_ids")
    if isinstance(ids, torch.Tensor) and ids.dim() == 2:
        return int(ids.shape[0]), int(ids.shape[1])
    return batch_size, seq_len


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"measure: {key} must be a positive integer, got {value!r}.")
