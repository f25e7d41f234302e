"""The ``compresskit`` command line: sub-commands come from the commands hook of every plugin."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from compresskit.commands import Command, CommandContext
from compresskit.errors import CompressKitError
from compresskit.registry import Registry


def build_parser(registry: Registry) -> tuple[argparse.ArgumentParser, dict[str, Command]]:
    """An argument parser with one sub-parser per registered command."""
    parser = argparse.ArgumentParser(
        prog="compresskit",
        description="Compress and distil Hugging Face Transformers with pluggable strategies.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands: dict[str, Command] = {}
    for name in registry.names("command"):
        command = registry.create("command", name)
        sub = subparsers.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(sub)
        commands[name] = command
    return parser, commands


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``compresskit`` and ``python -m compresskit``; returns the exit status."""
    try:
        registry = Registry.from_plugins()
        parser, commands = build_parser(registry)
        args = parser.parse_args(argv)
        if args.version:
            from compresskit import __version__

            print(__version__)
            return 0
        if not args.command:
            parser.print_help()
            return 2
        return commands[args.command].run(args, CommandContext(registry=registry))
    except CompressKitError as exc:
        print(f"compresskit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("compresskit: interrupted; completed work and checkpoints are kept.", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
