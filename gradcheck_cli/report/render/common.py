"""Small helpers the machine formats share: where a finding is, what a scan's outcome is.

Pure functions of the records; no torch, no printing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from gradcheck_cli.report.gate import failing_findings, fingerprint, scan_exit_code
from gradcheck_cli.report.records import Finding, Report, ScanResult
from gradcheck_cli.report.series import WatchSeries

MISSING = "—"
"""A number that was not measured."""

OUTCOMES = {0: "pass", 1: "fail", 2: "error"}
"""A scan's exit code in words, as the markdown and table summaries show it."""

INVISIBLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
"""Control characters other than tab, LF and CR (C0, DEL, C1), lone surrogates (a file name read
with surrogateescape) and the noncharacters U+FFFE/U+FFFF: XML 1.0 cannot hold most of them at all
(one ESC from an ANSI-coloured error message makes a JUnit file unparseable), and in Markdown or a
SARIF viewer they garble the text or hide part of it."""


def visible(text: str) -> str:
    """``text`` with every INVISIBLE character written as a visible escape: ESC -> ``\\x1b``."""
    return INVISIBLE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def target_file(target: str) -> str | None:
    """The model file of a TARGET (``model.py`` or ``model.py:NAME``), or None for a builtin or
    an installed module, which have no file the user can open."""
    path = target
    head, sep, tail = target.rpartition(":")
    if sep and head.endswith(".py") and tail.isidentifier():
        path = head
    return path if path.endswith(".py") else None


def where(finding: Finding) -> str:
    """``at fc1`` or ``(whole model)``, as the table writes it; a watch report's finding adds when
    and where it was seen: ``at fc1 (step 120, rank 1)``."""
    place = f"at {finding.layer}" if finding.layer is not None else "(whole model)"
    seen = [f"{word} {value}" for word, value in (("step", finding.step), ("rank", finding.rank))
            if value is not None]
    return f"{place} ({', '.join(seen)})" if seen else place


def outcome(result: ScanResult, known: frozenset[str]) -> str:
    """``pass``, ``fail`` or ``error``."""
    return OUTCOMES[scan_exit_code(result, known)]


def gate_fingerprints(result: ScanResult, known: frozenset[str]) -> set[str]:
    """Fingerprints of the scan's findings that fail its gate (after the baseline)."""
    if result.report is None:
        return set()
    return {fingerprint(f) for f in failing_findings(result.report, known)}


def format_number(value: float | int | None) -> str:
    """A number in at most 8 cells: ``1.2e-08``, ``3.40``, ``0.123``, ``512``, ``NaN``, ``—``."""
    if value is None:
        return MISSING
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude < 0.01 or magnitude >= 1000:
        return f"{value:.1e}"
    if magnitude >= 100:
        return f"{value:.0f}"
    # "#" keeps trailing zeros (3.40); rounding up to 100 would leave "100." behind.
    return f"{value:#.3g}".rstrip(".")


def is_watch(report: Report) -> bool:
    """A training watch's report (gradcheck_cli.watch), not a scan's: config["mode"] == "watch"."""
    return report.config.get("mode") == "watch"


def summarised_series(report: Report) -> WatchSeries | None:
    """The series that the table and Markdown headers summarise in one line (series_summary): a
    watch's, or any series a report was given, but not a scan's own --steps series (its optimizer
    steps numbered 0.., analyse/pipeline.py step_series): the scan's loss line and update/w column
    already show those steps, and a scan's text formats stay as they were before it had one."""
    series = report.series
    if series is None or is_watch(report):
        return series
    scan_steps = bool(report.config.get("steps")) and series.steps == tuple(range(len(series.steps)))
    return None if scan_steps else series


def watch_summary(config: Mapping[str, Any]) -> str:
    """What a watch measured, for the header: ``watched: 40 steps of SGD, every=10, cpu``
    (the watch's own parameters, as gradcheck_cli.watch takes them)."""
    steps = config.get("steps", "?")
    optimizer = config.get("optimizer")
    text = f"watched: {steps} steps" + (f" of {optimizer}" if optimizer else " (no optimizer)")
    text += f", every={config.get('every', '?')}"
    if config.get("sample_every"):
        text += f", sample_every={config['sample_every']}"
    return f"{text}, {config.get('device', '?')}"


def series_summary(series: WatchSeries) -> str:
    """One line on a watch report's time series (report/series.py) for the table and Markdown:
    which steps it holds, the loss from first to last, and the largest gradient norm seen."""
    if not series.steps:
        return "watch: no steps"
    text = f"watch: {len(series.steps)} sampled steps, {series.steps[0]}–{series.steps[-1]}"
    measured_loss = [v for v in series.loss if v is not None]
    if measured_loss:
        text += f" · loss {format_number(measured_loss[0])} → {format_number(measured_loss[-1])}"
    peaks = [(value, layer.name, step) for layer in series.layers
             for value, step in zip(layer.grad_norm, series.steps, strict=True) if value is not None]
    if peaks:
        value, name, step = max(peaks, key=lambda peak: peak[0] if peak[0] == peak[0] else math.inf)
        text += f" · largest grad_norm {format_number(value)} at {name} (step {step})"
    return text
