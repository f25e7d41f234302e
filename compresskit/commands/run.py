"""``compresskit run CONFIG``: the main job — fine-tune, decompose, distil, evaluate, measure, save, track."""

from __future__ import annotations

import argparse
from pathlib import Path

from compresskit.commands import Command, CommandContext
from compresskit.errors import UsageError


class RunCommand(Command):
    """Run a strategy config file end to end; rerunning resumes where the last run stopped."""

    name = "run"
    help = "run a strategy config end to end (resumes an interrupted run in the same --output)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("config", help="strategy config file (TOML), e.g. configs/demo-minilm-sst2.toml")
        add_run_arguments(parser)

    def run(self, args: argparse.Namespace, context: CommandContext) -> int:
        return run_config(Path(args.config), args, context)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options shared by ``run`` and ``demo``."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value (TOML syntax), e.g. --set steps[1].options.stage2.learning_rate=1e-4",
    )
    parser.add_argument(
        "--output", help="run directory (default: output_dir of the config, else runs/<name>)"
    )
    parser.add_argument("--restart", action="store_true", help="discard the run directory and start over")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to train (default: config)")
    parser.add_argument("--no-tracking", action="store_true", help="do not record the run in MLflow")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_config(config: Path, args: argparse.Namespace, context: CommandContext) -> int:
    """Load ``config`` with the overrides in ``args``, run the pipeline and print the summary."""
    from compresskit.config import load_config
    from compresskit.pipeline import Pipeline

    if args.output and Path(args.output).exists() and not Path(args.output).is_dir():
        raise UsageError(f"--output {args.output}: it is a file; give a folder for the run.")
    overrides = list(args.overrides)
    if args.no_tracking:
        overrides.append('tracking.tracker="none"')
    strategy = load_config(config, overrides)
    pipeline = Pipeline(
        strategy,
        output_dir=args.output,
        registry=context.registry,
        restart=args.restart,
        device=args.device,
        progress=not args.no_progress,
    )
    result = pipeline.run()
    if pipeline.main:  # under accelerate launch, the table once
        print()
        print(result.table)
    return 0
