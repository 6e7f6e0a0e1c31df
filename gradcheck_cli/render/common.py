"""Small helpers the machine formats share: where a finding is, what a scan's outcome is.

Pure functions of the records; no torch, no printing.
"""

from __future__ import annotations

from gradcheck_cli.gate import failing_findings, fingerprint, scan_exit_code
from gradcheck_cli.report import Finding, ScanResult

OUTCOMES = {0: "pass", 1: "fail", 2: "error"}
"""A scan's exit code in words, as the markdown and table summaries show it."""


def target_file(target: str) -> str | None:
    """The model file of a TARGET (``model.py`` or ``model.py:NAME``), or None for a builtin or
    an installed module, which have no file the user can open."""
    path = target
    head, sep, tail = target.rpartition(":")
    if sep and head.endswith(".py") and tail.isidentifier():
        path = head
    return path if path.endswith(".py") else None


def where(finding: Finding) -> str:
    """``at fc1`` or ``(whole model)``, as the table writes it."""
    return f"at {finding.layer}" if finding.layer is not None else "(whole model)"


def outcome(result: ScanResult, known: frozenset[str]) -> str:
    """``pass``, ``fail`` or ``error``."""
    return OUTCOMES[scan_exit_code(result, known)]


def gate_fingerprints(result: ScanResult, known: frozenset[str]) -> set[str]:
    """Fingerprints of the scan's findings that fail its gate (after the baseline)."""
    if result.report is None:
        return set()
    return {fingerprint(f) for f in failing_findings(result.report, known)}
