"""The GitHub Actions renderer: workflow commands that become annotations on the run and the PR.

One line per finding: ``::error`` for a finding that fails the gate, ``::warning`` for another
error or warning, ``::notice`` for information and for findings a baseline accepts; one
``::error`` per scan that could not run. With --verify, one ``::notice`` per recommendation with
what its verification measured (``::error`` when ``--fail-on unverified`` fails on it) and one
for the verified set applied together. ``file=`` names the model file when the target is one.
Values are escaped as the Actions runner unescapes them (actions/toolkit, command.ts): in the
message ``%``, CR and LF; in properties also ``:`` and ``,``.
"""

from __future__ import annotations

from collections.abc import Sequence

from gradcheck_cli.report.gate import fingerprint, unverified_recommendations
from gradcheck_cli.report.records import Finding, Report, ScanResult, Severity
from gradcheck_cli.report.render.common import gate_fingerprints, target_file, visible, where
from gradcheck_cli.report.render.verified import combined_text, has_verification, status_text, verification_text


def escape_data(text: str) -> str:
    """A workflow command's message: ``%`` first, so the escapes themselves survive; other control
    characters (an ANSI colour code in an error message) are written as visible escapes, as in the
    other machine formats, so they can neither garble the log nor hide part of the line."""
    return visible(text.replace("%", "%25")).replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """A workflow command's property value (``title=``, ``file=``)."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def command(level: str, message: str, **properties: str) -> str:
    """``::level key=value,key=value::message`` with every part escaped."""
    props = ",".join(f"{key}={escape_property(value)}" for key, value in properties.items())
    return f"::{level}{' ' + props if props else ''}::{escape_data(message)}"


def render_github(results: Sequence[ScanResult], known: frozenset[str] = frozenset()) -> str:
    """The workflow commands, one per line, ending with a newline (empty when nothing to say)."""
    lines: list[str] = []
    for result in results:
        path = target_file(result.target)
        location = {"file": path} if path is not None else {}
        if result.report is None:
            lines.append(command("error", result.error or "the scan failed",
                                 title=f"gradcheck: scan {result.name} failed", **location))
            continue
        failing = gate_fingerprints(result, known)
        for finding in result.report.findings:
            level, note = _level(finding, failing, known)
            title = f"gradcheck: {finding.kind.value} {where(finding)}{note}"
            if len(results) > 1:
                title += f" (scan {result.name})"
            lines.append(command(level, finding.message, title=title, **location))
        if has_verification(result.report):
            scan = f" (scan {result.name})" if len(results) > 1 else ""
            lines += _verification_lines(result.report, scan, location)
    return "".join(line + "\n" for line in lines)


def _verification_lines(report: Report, scan: str, location: dict[str, str]) -> list[str]:
    """What --verify measured, per recommendation, and the combined line."""
    failing = unverified_recommendations(report)
    lines = [command("error" if rec in failing else "notice", verification_text(rec.verification),
                     title=f"gradcheck: {rec.id.value} {status_text(rec.verification)}{scan}", **location)
             for rec in report.recommendations]
    if report.verification is not None:
        lines.append(command("notice", combined_text(report.verification),
                             title=f"gradcheck: verified fixes applied together{scan}", **location))
    return lines


def _level(finding: Finding, failing: set[str], known: frozenset[str]) -> tuple[str, str]:
    mark = fingerprint(finding)
    if mark in failing:
        return "error", ""
    if mark in known:
        return "notice", " (baselined)"
    if finding.severity is Severity.INFO:
        return "notice", ""
    return "warning", ""
