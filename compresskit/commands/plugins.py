"""``compresskit plugins``: list every registered component and where it comes from."""

from __future__ import annotations

import argparse
import json

from compresskit.commands import Command, CommandContext
from compresskit.report_table import format_table


class PluginsCommand(Command):
    """List installed components (kind, name, plugin module, distribution, version)."""

    name = "plugins"
    help = "list every registered decomposition, distiller, loss, task, tracker and command"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
        parser.add_argument("--kind", help="only components of this kind (e.g. decomposition)")

    def run(self, args: argparse.Namespace, context: CommandContext) -> int:
        rows = [info.to_dict() for info in context.registry]
        if args.kind:
            context.registry.table(args.kind)  # unknown kinds raise with the list of kinds
            rows = [row for row in rows if row["kind"] == args.kind]
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        columns = ["kind", "name", "plugin", "distribution", "version"]
        print(format_table(columns, [[row[c] for c in columns] for row in rows]))
        return 0
