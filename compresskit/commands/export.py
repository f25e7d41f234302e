"""``compresskit export``: write a saved (compressed) model as ONNX, checked in ONNX Runtime.

    compresskit export --model runs/kb8/student --format onnx --output kb8.onnx [--quantize int8]

The model folder is a compresskit save (reloaded with its compression plan) or a plain Hugging Face
folder; the ONNX file has dynamic batch and sequence axes (see :mod:`compresskit.export`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from torch import nn

from compresskit.commands import Command, CommandContext
from compresskit.errors import ConfigError


class ExportCommand(Command):
    """Export a saved model to ONNX and check its outputs in ONNX Runtime."""

    name = "export"
    help = "export a saved (compressed) model to ONNX, checked in ONNX Runtime (optionally int8)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", required=True, help="saved model folder (compresskit or Hugging Face)")
        parser.add_argument("--format", default="onnx", choices=["onnx"], help="export format (onnx)")
        parser.add_argument("--output", help="file to write (default: <model>/model.onnx)")
        parser.add_argument("--quantize", choices=["int8"], help="also write <output stem>.int8.onnx")
        parser.add_argument("--tolerance", type=float, default=1e-4, help="allowed ORT vs PyTorch difference")
        parser.add_argument("--json", action="store_true", help="print the result as JSON")

    def run(self, args: argparse.Namespace, context: CommandContext) -> int:
        from compresskit.export import export_onnx
        from compresskit.models import resolve_model_path
        from compresskit.saving import PLAN_FILE, load

        path = resolve_model_path(args.model, where="--model")
        if not (Path(path) / "config.json").is_file():
            raise ConfigError(f"--model {args.model!r}: no config.json there; give a saved model folder.")
        model = load(path) if (Path(path) / PLAN_FILE).is_file() else _hf_model(path)
        output = Path(args.output) if args.output else Path(path) / "model.onnx"
        result = export_onnx(model, output, tolerance=args.tolerance, quantize=args.quantize)
        if args.json:
            print(json.dumps(result.to_dict(), indent=2))
        else:
            print(f"wrote {result.path} (ONNX Runtime vs PyTorch: max |diff| {result.max_abs_diff:.3g})")
            if result.quantized_path:
                print(f"wrote {result.quantized_path} (dynamic int8)")
        return 0


def _hf_model(path: str) -> nn.Module:
    """A plain Hugging Face folder, as the class its config names (``AutoModel`` otherwise)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=False)
    name = (config.architectures or ["AutoModel"])[0]
    cls = getattr(transformers, name, transformers.AutoModel)
    model: nn.Module = cls.from_pretrained(path, trust_remote_code=False)
    return model
