"""`gradcheck report FILE`: a saved JSON report read back (Report.from_dict) for cli/app.py to render.

FILE is a scan's or a watch's gradcheck/report@1 document, or a recipe run's gradcheck/run@1
(`gradcheck run --format json`): then every scan is read back, a scan that could not run with its
error line, and they render as the run did (one page, one table per scan), exiting as the worst.

The gate is the scan's (report/gate.py): the report's own config["fail_on"] (what the scan was
run with), unless --fail-on gives another, and a report that has none gets the built-in default.
So `gradcheck report saved.json` exits as the scan that wrote it did, and `--fail-on` asks a
different question of the same measurements without running the model again. Everything wrong
with FILE (missing, unreadable, not JSON, not a report) is a UserError: one line, exit 2.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from gradcheck_cli.config import DEFAULT_FAIL_ON
from gradcheck_cli.errors import UserError
from gradcheck_cli.report.gate import UNVERIFIED
from gradcheck_cli.report.load import ReportFormatError
from gradcheck_cli.report.records import SCHEMA, Report, ScanResult
from gradcheck_cli.report.render.json import RUN_SCHEMA


def load_report(path: Path, fail_on: tuple[str, ...] | None) -> tuple[list[ScanResult], bool]:
    """The saved scans at ``path``, each gated by ``fail_on`` (None: the report's own), and whether
    they are a recipe run's (run@1: render them combined, as `gradcheck run` did)."""
    results, combined = read_results(path)
    return [_gated(result, fail_on, path) for result in results], combined


def read_results(path: Path) -> tuple[list[ScanResult], bool]:
    """FILE's scans as saved: one for a report@1 document; one per scan of a run@1 document (True),
    a scan that could not run with its error. UserError (one line) for anything else."""
    document = _read_json(path)
    schema = document.get("schema") if isinstance(document, Mapping) else None
    try:
        if schema != RUN_SCHEMA:
            report = Report.from_dict(document)
            return [ScanResult(report.target, report.target, report)], False
        return [_run_scan(scan) for scan in document["scans"]], True
    except ReportFormatError as exc:
        message = str(exc) if schema in (SCHEMA, RUN_SCHEMA) else (
            f'not a gradcheck report (expected a JSON object with "schema": "{SCHEMA}" or "{RUN_SCHEMA}")')
        raise UserError(f"report {path}: {message}") from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"report {path}: a {RUN_SCHEMA} document with a malformed 'scans' list ({exc!r})") from None


def _run_scan(scan: Mapping[str, Any]) -> ScanResult:
    name, target, saved = str(scan["name"]), str(scan["target"]), scan["report"]
    if saved is None:
        return ScanResult(name, target, None, str(scan.get("error") or "the scan did not run"))
    return ScanResult(name, target, Report.from_dict(saved))


def _gated(result: ScanResult, fail_on: tuple[str, ...] | None, path: Path) -> ScanResult:
    report = result.report
    if report is None:
        return result
    gate = fail_on if fail_on is not None else tuple(report.config.get("fail_on", DEFAULT_FAIL_ON))
    if UNVERIFIED in gate and not _verified(report):
        raise UserError(f"report {path}: --fail-on unverified needs a report written by a scan with --verify")
    return replace(result, report=replace(report, config={**report.config, "fail_on": list(gate)}))


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
