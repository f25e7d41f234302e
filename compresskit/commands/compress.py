"""``compresskit compress``: decompose a model with a preset or strategy file, print the report, save it."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

from compresskit.commands import Command, CommandContext
from compresskit.commands.inspect import add_model_and_strategy, model_class, model_path, strategy_of
from compresskit.errors import ConfigError


class CompressCommand(Command):
    """Decompose, report and save (``compresskit.load`` reloads the folder)."""

    name = "compress"
    help = "decompose a model with --preset/--config, print the report and save it to --output"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_model_and_strategy(parser)
        parser.add_argument("--output", required=True, help="folder to write the compressed model to")
        parser.add_argument(
            "--merge",
            action="store_true",
            help="save a plain dense transformers model (factors multiplied out)",
        )
        parser.add_argument("--seed", type=int, default=42, help="seed of randomised SVDs (default 42)")

    def run(self, args: argparse.Namespace, context: CommandContext) -> int:
        from compresskit.models import load_hf_config, pretrained
        from compresskit.preflight_plan import check_plan
        from compresskit.saving import merge, save
        from compresskit.seeding import seeded
        from compresskit.walker import as_groups, decompose, plan_compression

        strategy = strategy_of(args)
        if strategy is None:
            raise ConfigError("compress needs a strategy: pass --preset NAME or --config FILE.toml.")
        path = model_path(args.model)
        config = load_hf_config(str(path), where="--model")
        model: Any = pretrained(model_class(config), path, "--model")
        model.eval()
        groups = as_groups(strategy, context.registry)
        check_plan(plan_compression(model, groups, registry=context.registry), groups, "--config")
        with seeded(args.seed):  # randomised SVDs draw from the global generator
            report = decompose(model, groups, registry=context.registry)
        output = Path(args.output)
        if args.merge:
            merged: Any = merge(model)
            merged.save_pretrained(str(output))
        else:
            save(model, output, base_model=str(args.model))
        _copy_tokenizer(path, output)
        (output / "compression_report.json").write_text(report.to_json(), encoding="utf-8")
        print(report.to_json() if args.json else report.format())
        if not args.json:
            print(f"\nsaved to {output} (load with compresskit.load({str(output)!r}))")
        return 0


def _copy_tokenizer(source: Path, output: Path) -> None:
    """Save the model's tokenizer beside it when the source has a usable one (``load_tokenizer``)."""
    from compresskit.models import load_tokenizer

    try:
        tokenizer = load_tokenizer(source)
    except ConfigError:
        warnings.warn(
            f"{source} has no tokenizer, so {output} has none either: `compresskit evaluate`, pipeline() and "
            f"MLflow serving need one. Save it there: AutoTokenizer.from_pretrained(...).save_pretrained"
            f"({str(output)!r}).",
            stacklevel=2,
        )
        return
    tokenizer.save_pretrained(str(output))
