"""The JSON renderer: the report document of schema gradcheck/report@1, as text, and for a
recipe run the gradcheck/run@1 document that holds one report@1 per scan.

The documents are deterministic (no timestamps, keys in schema order), with NaN/Infinity already
written as strings so any JSON parser reads them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from gradcheck_cli import __version__
from gradcheck_cli.report.gate import scan_exit_code
from gradcheck_cli.report.records import Report, ScanResult

RUN_SCHEMA = "gradcheck/run@1"


def render_json(report: Report) -> str:
    """The report as an indented JSON document ending with a newline."""
    return json.dumps(report.to_dict(), indent=2) + "\n"


def render_run_json(results: Sequence[ScanResult], known: frozenset[str] = frozenset()) -> str:
    """The run@1 document: every scan with its exit code, its error or its report@1.

    ``exit_code`` is the scan's gate after the baseline (0 pass, 1 findings, 2 error); the
    tool version is the one running, as a scan that errored has no report to take it from.
    """
    document = {
        "schema": RUN_SCHEMA,
        "tool": {"name": "gradcheck", "version": __version__},
        "scans": [
            {
                "name": result.name,
                "target": result.target,
                "exit_code": scan_exit_code(result, known),
                "error": result.error,
                "report": result.report.to_dict() if result.report is not None else None,
            }
            for result in results
        ],
    }
    return json.dumps(document, indent=2) + "\n"
