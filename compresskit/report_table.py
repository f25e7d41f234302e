"""Plain-text aligned tables for the CLI (no third-party dependency)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def format_table(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], *, align_right: Sequence[str] = ()
) -> str:
    """Render ``rows`` under ``columns`` with a rule line; columns in ``align_right`` are right-aligned."""
    cells = [[str(c) for c in columns]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    right = set(align_right)

    def line(row: list[str]) -> str:
        parts = [
            cell.rjust(width) if columns[i] in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)
