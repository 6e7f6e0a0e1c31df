"""Output formats: one module per format, each turning a Report into a string.

Renderers never print, never import torch and hold no state; ``cli.py`` writes what they return.
"""

from __future__ import annotations

from enum import Enum

from gradcheck_cli.render.json import render_json
from gradcheck_cli.render.table import format_number, render_table
from gradcheck_cli.report import Report

__all__ = ["OutputFormat", "format_number", "render", "render_json", "render_table"]


class OutputFormat(str, Enum):
    """The ``--format`` choices."""

    TABLE = "table"
    """A Rich table per layer, findings, ranked fixes and a verdict line, for humans."""
    JSON = "json"
    """The gradcheck/report@1 document, for machines."""


def render(report: Report, fmt: OutputFormat, *, width: int = 100, color: bool = False) -> str:
    """Render ``report`` in format ``fmt``; ``width`` and ``color`` apply to the table only."""
    if fmt is OutputFormat.TABLE:
        return render_table(report, width=width, color=color)
    if fmt is OutputFormat.JSON:
        return render_json(report)
    # Reached only by a format added to the enum without a renderer (tests walk every member).
    raise ValueError(f"no renderer for output format {fmt!r}")
