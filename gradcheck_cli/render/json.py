"""The JSON renderer: the report document of schema gradcheck/report@1, as text.

The document is exactly ``Report.to_dict()``: deterministic (no timestamps, keys in schema order),
with NaN/Infinity already written as strings so any JSON parser reads it.
"""

from __future__ import annotations

import json

from gradcheck_cli.report import Report


def render_json(report: Report) -> str:
    """The report as an indented JSON document ending with a newline."""
    return json.dumps(report.to_dict(), indent=2) + "\n"
