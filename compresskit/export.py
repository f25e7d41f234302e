"""Export a (compressed) Hugging Face model to ONNX and check it in ONNX Runtime.

``export_onnx`` traces the model with ``torch.onnx.export(dynamo=True)`` with dynamic batch and sequence
axes on ``input_ids`` / ``attention_mask`` (and ``token_type_ids`` when the model takes them). Compressed
layers are traced in their static formulation (``compresskit.dispatch``: nothing is timed while tracing),
so the graph holds the factors, never the dense weights. The exported file is then run in ONNX Runtime on
random inputs of another batch size and length than the trace's, and its output compared with PyTorch's:
the largest absolute difference must stay below ``tolerance`` × the largest PyTorch output magnitude
(default 1e-4 in float32), otherwise :class:`ExportError` is raised. ``quantize="int8"`` additionally
writes ``<name>.int8.onnx`` with ONNX Runtime's dynamic int8 quantisation of every MatMul / Gemm whose
weight is a constant (the Kronecker / low-rank factors included).
"""

from __future__ import annotations

import inspect
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compresskit.errors import CompressKitError, MissingDependencyError

DEFAULT_TOLERANCE = 1e-4


class ExportError(CompressKitError):
    """The export failed or the exported model disagrees with PyTorch."""


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote and how well ONNX Runtime agrees with PyTorch."""

    path: str
    output: str
    inputs: tuple[str, ...]
    max_abs_diff: float
    relative_diff: float
    seconds: float
    quantized_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Logits(nn.Module):
    """Returns the model's first output as one tensor (``logits`` or ``last_hidden_state``)."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        out = self.model(**dict(zip(self.names, args, strict=True)))
        first = out[0] if isinstance(out, tuple | list) else next(iter(out.values()))
        return first


def input_names(model: nn.Module) -> tuple[str, ...]:
    """The token inputs the model's forward accepts, among input_ids, attention_mask, token_type_ids."""
    accepted = inspect.signature(model.forward).parameters
    return tuple(n for n in ("input_ids", "attention_mask", "token_type_ids") if n in accepted)


def example_inputs(model: nn.Module, batch: int, seq_len: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random token ids (below the vocabulary size), an all-ones mask and zero token types."""
    config = getattr(model, "config", None)
    vocab = int(getattr(config, "vocab_size", 1000))
    gen = torch.Generator().manual_seed(seed)
    made = {
        "input_ids": torch.randint(0, vocab, (batch, seq_len), generator=gen),
        "attention_mask": torch.ones(batch, seq_len, dtype=torch.long),
        "token_type_ids": torch.zeros(batch, seq_len, dtype=torch.long),
    }
    return tuple(made[name] for name in input_names(model))


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    seq_len: int = 16,
    tolerance: float = DEFAULT_TOLERANCE,
    quantize: str | None = None,
) -> ExportResult:
    """Write ``path`` (ONNX) for ``model``, check it in ONNX Runtime, optionally quantise it (int8).

    Raises :class:`MissingDependencyError` without onnx / onnxscript / onnxruntime, :class:`ExportError`
    when tracing fails or the outputs disagree beyond ``tolerance``.
    """
    if quantize not in (None, "int8"):
        raise ExportError(f"quantize={quantize!r}: only 'int8' (dynamic, weights int8) is supported.")
    _require("onnxruntime", "onnxscript", "onnx")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    names = input_names(model)
    if "input_ids" not in names:
        raise ExportError(f"{type(model).__name__}.forward takes no input_ids: export needs a token model.")
    wrapper = _Logits(model, names).eval()
    start = time.perf_counter()
    batch = torch.export.Dim("batch", min=1, max=4096)
    length = torch.export.Dim("sequence", min=2, max=_max_positions(model))
    shapes = tuple({0: batch, 1: length} for _ in names)
    try:
        with torch.no_grad():
            torch.onnx.export(
                wrapper,
                example_inputs(model, 2, seq_len),
                str(target),
                input_names=list(names),
                output_names=["output"],
                dynamic_shapes=(shapes,),
                dynamo=True,
                external_data=False,
            )
    except Exception as exc:  # torch.onnx raises many types; the user needs the cause and the file
        raise ExportError(f"ONNX export of {type(model).__name__} to {target} failed: {exc}") from exc
    seconds = time.perf_counter() - start
    diff, relative = check_onnx(model, target, names)
    if relative > tolerance:
        raise ExportError(
            f"{target}: ONNX Runtime's output differs from PyTorch's by {diff:.3g} ({relative:.3g} of the "
            f"largest output, tolerance {tolerance:g}). Please report this with the model's config."
        )
    quantized = quantize_onnx(target) if quantize == "int8" else None
    output_name = "logits" if hasattr(getattr(model, "config", None), "num_labels") else "output"
    return ExportResult(str(target), output_name, names, diff, relative, seconds, quantized)


def check_onnx(model: nn.Module, path: Path, names: tuple[str, ...]) -> tuple[float, float]:
    """(max |ORT − PyTorch|, that divided by max |PyTorch|) on inputs of batch 3 × 11 tokens."""
    session = ort_session(path)
    inputs = example_inputs(model, 3, 11, seed=1)
    with torch.no_grad():
        expected = _Logits(model, names)(*inputs).float()
    (got,) = session.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})
    diff = (torch.from_numpy(got).float() - expected).abs().max().item()
    return diff, diff / max(expected.abs().max().item(), 1e-12)


def ort_session(path: str | Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session for ``path`` (``threads`` intra-op threads if given)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def quantize_onnx(path: Path) -> str:
    """``<stem>.int8.onnx``: ONNX Runtime dynamic quantisation (int8 weights of MatMul / Gemm)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = path.with_suffix(".int8.onnx")
    plain = path.with_suffix(".noshapes.onnx")
    graph = onnx.load(str(path))
    del graph.graph.value_info[:]  # the exporter's intermediate shapes trip the quantiser's shape inference
    onnx.save(graph, str(plain))
    try:
        quantize_dynamic(str(plain), str(out), weight_type=QuantType.QInt8)
    finally:
        plain.unlink(missing_ok=True)
    return str(out)


def _max_positions(model: nn.Module) -> int:
    return int(getattr(getattr(model, "config", None), "max_position_embeddings", 512) or 512)


def _require(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(
            f"ONNX export needs {', '.join(missing)}: install them with "
            "`pip install 'compresskit[onnx]'` (onnx, onnxscript, onnxruntime)."
        )
