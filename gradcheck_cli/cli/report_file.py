"""`gradcheck report FILE`: a saved JSON report read back (Report.from_dict) for cli/app.py to render.

The gate is the scan's (report/gate.py): the report's own config["fail_on"] (what the scan was
run with), unless --fail-on gives another, and a report that has none gets the built-in default.
So `gradcheck report saved.json` exits as the scan that wrote it did, and `--fail-on` asks a
different question of the same measurements without running the model again. Everything wrong
with FILE (missing, unreadable, not JSON, not a report) is a UserError: one line, exit 2.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from gradcheck_cli.config import DEFAULT_FAIL_ON
from gradcheck_cli.errors import UserError
from gradcheck_cli.report.gate import UNVERIFIED
from gradcheck_cli.report.load import ReportFormatError
from gradcheck_cli.report.records import Report, ScanResult


def load_report(path: Path, fail_on: tuple[str, ...] | None) -> ScanResult:
    """The saved report at ``path`` as a ScanResult, gated by ``fail_on`` (None: the report's own)."""
    try:
        report = Report.from_dict(_read_json(path))
    except ReportFormatError as exc:
        raise UserError(f"report {path}: {exc}") from None
    gate = fail_on if fail_on is not None else tuple(report.config.get("fail_on", DEFAULT_FAIL_ON))
    if UNVERIFIED in gate and not _verified(report):
        raise UserError(f"report {path}: --fail-on unverified needs a report written by a scan with --verify")
    report = replace(report, config={**report.config, "fail_on": list(gate)})
    return ScanResult(report.target, report.target, report)


def read_report_json(path: Path) -> Any:
    """FILE's JSON document, whatever its schema (`gradcheck plot` also reads a recipe run's run@1);
    the same one-line UserError as load_report when it is missing, unreadable or not JSON."""
    return _read_json(path)


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"report {path} does not exist; write one with "
                        f"`gradcheck scan TARGET --format json -o {path}`") from None
    except IsADirectoryError:
        raise UserError(f"report {path} is a directory, not a JSON report") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"report {path} cannot be read: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"report {path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                        "write one with --format json") from None
    except RecursionError:  # json recurses once per nesting level
        raise UserError(f"report {path}: nested too deeply to be a gradcheck report") from None


def _verified(report: Report) -> bool:
    """Whether the scan ran --verify (the gate "unverified" judges nothing otherwise, as in `scan`)."""
    return bool(report.config.get("verify")) or any(r.verification is not None for r in report.recommendations)
