"""``compresskit inspect``: print what a strategy would replace, without changing anything.

Without a strategy it lists the model's modules (name, type, weight shape, parameters), which is what
one needs to write ``names`` patterns. The model is built on the ``meta`` device from its config, so
nothing is allocated and no weight is read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compresskit.commands import Command, CommandContext
from compresskit.errors import ConfigError
from compresskit.report_table import format_table


def add_model_and_strategy(parser: argparse.ArgumentParser) -> None:
    """``--model`` and the strategy options shared by ``inspect`` and ``compress``."""
    parser.add_argument(
        "--model", required=True, help="a folder holding a Hugging Face model, or 'default' (MiniLM-L6)"
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--config", help="TOML file with one [[steps]] decompose step or top-level [[groups]]")
    group.add_argument("--preset", help="a registered preset name (see `compresskit plugins --kind preset`)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def model_path(value: str) -> Path:
    """``default`` → the embedded MiniLM-L6 folder; otherwise an existing folder."""
    if value == "default":
        from compresskit.defaults import default_teacher_path

        return default_teacher_path()
    path = Path(value).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"--model {value!r}: no config.json there; give a Hugging Face model folder or 'default'."
        )
    return path


def strategy_of(args: argparse.Namespace) -> dict[str, Any] | None:
    """The decompose step named by ``--preset`` / ``--config``, or ``None``."""
    from compresskit.targets import read_step_file

    if args.preset:
        return {"preset": args.preset}
    if args.config:
        return read_step_file(args.config)
    return None


def model_class(config: Any) -> Any:
    """The class named in ``config.architectures``, else ``AutoModel``."""
    import transformers

    names = list(getattr(config, "architectures", None) or [])
    found = getattr(transformers, names[0], None) if names else None
    return found if isinstance(found, type) else transformers.AutoModel


def meta_model(path: Path) -> nn.Module:
    """The architecture on the ``meta`` device: shapes only, no memory, no weights read."""
    from compresskit.models import load_hf_config

    config = load_hf_config(str(path), where="--model")
    cls = model_class(config)
    with torch.device("meta"):
        model: nn.Module = (cls.from_config if hasattr(cls, "from_config") else cls)(config)
    return model


def module_rows(model: nn.Module) -> list[list[Any]]:
    """One row per module with parameters of its own: name, type, weight shape, parameters."""
    rows = []
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if name and own:
            weight = getattr(module, "weight", None)
            shape = "x".join(map(str, weight.shape)) if isinstance(weight, torch.Tensor) else "-"
            rows.append([name, type(module).__name__, shape, sum(p.numel() for p in own)])
    return rows


class InspectCommand(Command):
    """Print the compression plan (or the module list) of a model, changing nothing."""

    name = "inspect"
    help = "show what a strategy would replace (dry run), or list a model's modules"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_model_and_strategy(parser)

    def run(self, args: argparse.Namespace, context: CommandContext) -> int:
        from compresskit.walker import plan_compression

        model = meta_model(model_path(args.model))
        strategy = strategy_of(args)
        if strategy is None:
            rows = module_rows(model)
            if args.json:
                keys = ("name", "type", "shape", "params")
                print(json.dumps([dict(zip(keys, r, strict=True)) for r in rows], indent=2))
            else:
                print(format_table(["module", "type", "weight", "params"], rows, align_right=["params"]))
            return 0
        plan = plan_compression(model, strategy, registry=context.registry)
        print(plan.to_json() if args.json else plan.format())
        return 0
