"""The ``compresskit`` command line: sub-commands come from the commands hook of every plugin."""

from __future__ import annotations

import argparse
import functools
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import TextIO

from compresskit.commands import Command, CommandContext
from compresskit.errors import (
    EXIT_CODES,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
    CompressKitError,
    Terminated,
)
from compresskit.registry import Registry
from compresskit.signals import terminate_as_interrupt

#: Set to print the traceback of an internal error.
DEBUG_ENV = "COMPRESSKIT_DEBUG"


def build_parser(registry: Registry) -> tuple[argparse.ArgumentParser, dict[str, Command]]:
    """An argument parser with one sub-parser per registered command."""
    parser = argparse.ArgumentParser(
        prog="compresskit",
        description="Compress and distil Hugging Face Transformers with pluggable strategies.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    """Entry point of ``compresskit`` and ``python -m compresskit``; returns the exit status.

    Exit statuses by kind of failure are listed in :data:`compresskit.errors.EXIT_CODES` (and by
    ``compresskit --help``). SIGTERM is handled like Ctrl-C (:mod:`compresskit.signals`).
    """
    with terminate_as_interrupt(), warnings.catch_warnings():
        warnings.showwarning = functools.partial(_show_warning, warnings.showwarning)
        try:
            return _main(argv)
        except CompressKitError as exc:
            print(f"compresskit: error: {exc}", file=sys.stderr)
            return exc.exit_code
        except Terminated:
            print(f"compresskit: terminated (SIGTERM); {KEPT}", file=sys.stderr)
            return EXIT_TERMINATED
        except KeyboardInterrupt:
            print(f"compresskit: interrupted; {KEPT}", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception as exc:
            return _internal_error(exc)


#: What an interrupted run leaves behind (printed on Ctrl-C and SIGTERM).
KEPT = "completed stages and checkpoints are kept: run the same command again to resume."


def _main(argv: Sequence[str] | None) -> int:
    registry = Registry.from_plugins()
    parser, commands = build_parser(registry)
    args = parser.parse_args(argv)
    if args.version:
        from compresskit import __version__

        print(__version__)
        return EXIT_OK
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    return commands[args.command].run(args, CommandContext(registry=registry))


def _show_warning(
    fallback: Callable[..., None],
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """compresskit's (and its plugins') warnings as one ``compresskit: warning: ...`` line."""
    if category.__module__.split(".")[0].startswith("compresskit"):
        print(f"compresskit: warning: {message}", file=file or sys.stderr)
    else:
        fallback(message, category, filename, lineno, file, line)


def _internal_error(exc: Exception) -> int:
    """An exception no check anticipated: one line (the traceback with ``COMPRESSKIT_DEBUG=1``)."""
    if os.environ.get(DEBUG_ENV):
        traceback.print_exc()
    first_line = (str(exc).strip().splitlines() or [""])[0]
    origin = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    at = f" (at {origin.filename}:{origin.lineno})" if origin else ""
    print(
        f"compresskit: internal error: {type(exc).__name__}: {first_line}{at}. This is a bug in "
        f"compresskit or a plugin; rerun with {DEBUG_ENV}=1 for the traceback and report it.",
        file=sys.stderr,
    )
    return EXIT_INTERNAL


def _epilog() -> str:
    lines = ["exit status:"]
    lines += [f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES.items()]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
