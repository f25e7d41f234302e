"""The Command base class: one sub-command of the ``compresskit`` CLI, contributed by a plugin."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING

from compresskit.component import Component

if TYPE_CHECKING:
    from compresskit.registry import Registry


@dataclass(frozen=True)
class CommandContext:
    """What a command receives besides its parsed arguments."""

    registry: Registry


class Command(Component):
    """Base class of CLI commands (``compresskit_register_commands``).

    ``name`` is the sub-command word, ``help`` its one-line help; :meth:`add_arguments` declares its
    arguments and :meth:`run` executes it, returning the process exit status.
    """

    help: str = ""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare this command's arguments on its sub-parser."""

    def run(self, args: argparse.Namespace, context: CommandContext) -> int:
        """Execute the command; return the exit status."""
        raise NotImplementedError(f"command {self.name!r} does not implement run()")
