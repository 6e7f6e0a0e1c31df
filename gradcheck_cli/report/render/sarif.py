"""The SARIF renderer: a SARIF 2.1.0 log for code-scanning dashboards.

One run whose tool.driver has one rule per finding kind (every FindingKind, in enum order, so a
rule's index never depends on what a scan found), with the title, summary, mechanism and fix of
the kind's docs page (docs/findings/<kind>.md, read by report/catalog.py) as its help. Each
finding is a result with ruleId/ruleIndex, a level from its severity, the model file as a
physical location when the target is a file (relative to the current directory when
it lies below it) and the layer as a logical location, a ``partialFingerprints`` entry made of
kind and layer only (numbers change from run to run; the identity of a finding must not), and
its evidence as properties. A scan that errored is a toolExecutionNotification of a failed
invocation. With --verify, a finding's result also says what each recommendation that answers it
measured: a paragraph of its message text and a ``verification`` property (SARIF's ``fixes`` are
file edits, with required ``artifactChanges``; a recommendation is not one, so it is not written
there). With a baseline, every result gets a ``baselineState`` ("unchanged" for a known
finding, "new" otherwise). Control characters in any string (an ANSI colour code in an error
message) are written as visible escapes (common.visible), as a code-scanning view shows text.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import quote

from gradcheck_cli import __version__
from gradcheck_cli.report.catalog import FINDINGS
from gradcheck_cli.report.gate import fingerprint
from gradcheck_cli.report.records import Finding, FindingKind, Number, Recommendation, ScanResult, Severity
from gradcheck_cli.report.render.common import target_file, visible
from gradcheck_cli.report.render.verified import answering, fix_note, status_text

SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
"""The schema's own id (the OASIS standard with its errata), as shipped in tests/data/."""
SARIF_VERSION = "2.1.0"
FINGERPRINT_KEY = "gradcheck/v1"

LEVELS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}

# A rule's default level is the level its findings usually carry: the kinds the default gate fails
# on (NaN/Inf and explosion, DESIGN.md "Exit codes") and divergence are errors; a learning
# slowdown is a warning; a mis-scaled init alone is a note, since it may be deliberate.
DEFAULT_LEVELS: dict[FindingKind, str] = {
    FindingKind.VANISHING: "warning",
    FindingKind.EXPLODING: "error",
    FindingKind.NONFINITE: "error",
    FindingKind.VANISHING_THROUGH_TIME: "warning",
    FindingKind.EXPLODING_THROUGH_TIME: "error",
    FindingKind.SATURATED_ACTIVATION: "warning",
    FindingKind.DEAD_RELU: "warning",
    FindingKind.INIT_SCALE: "note",
    FindingKind.DIVERGENCE: "error",
    FindingKind.NONFINITE_INPUT: "error",
    FindingKind.FP16_UNDERFLOW: "warning",
    FindingKind.FP16_OVERFLOW: "error",
    FindingKind.BF16_STALE_UPDATE: "note",
    FindingKind.LOSS_SPIKE: "warning",
    FindingKind.GRAD_SPIKE: "warning",
    FindingKind.GRAD_TREND: "warning",
    FindingKind.WEIGHT_GROWTH: "warning",
    FindingKind.RANK_MISMATCH: "error",
}

RULE_ORDER = tuple(FindingKind)


def render_sarif(results: Sequence[ScanResult], known: frozenset[str] = frozenset(), *,
                 cwd: PurePath | None = None) -> str:
    """The SARIF log as indented JSON ending with a newline; ``cwd`` defaults to the current
    directory (only used to make model file paths relative)."""
    base = cwd if cwd is not None else Path.cwd()
    sarif_results = [
        _result(finding, result, known, base)
        for result in results if result.report is not None
        for finding in result.report.findings
    ]
    failed = [result for result in results if result.report is None]
    invocation: dict[str, Any] = {"executionSuccessful": not failed}
    if failed:
        invocation["toolExecutionNotifications"] = [
            {"level": "error", "message": {"text": f"scan {r.name} ({r.target}): {r.error}"},
             "descriptor": {"id": "scan-error"}}
            for r in failed
        ]
    log = {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [{
            "tool": {"driver": {
                "name": "gradcheck",
                "version": __version__,
                "semanticVersion": __version__,
                "rules": [_rule(kind) for kind in RULE_ORDER],
            }},
            "invocations": [invocation],
            "results": sarif_results,
        }],
    }
    return json.dumps(_visible_strings(log), indent=2, ensure_ascii=False) + "\n"


def _visible_strings(value: Any) -> Any:
    """Every string inside a JSON value through common.visible."""
    if isinstance(value, str):
        return visible(value)
    if isinstance(value, dict):
        return {key: _visible_strings(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_visible_strings(item) for item in value]
    return value


def _rule(kind: FindingKind) -> dict[str, Any]:
    entry = FINDINGS[kind]
    help_text = entry.summary
    help_markdown = f"**{entry.title}**: {entry.summary}"
    if entry.mechanism:
        help_text += f"\n\nWhy: {entry.mechanism}"
        help_markdown += f"\n\n**Why.** {entry.mechanism}"
    if entry.fix:
        help_text += f"\n\nFix: {entry.fix}"
        help_markdown += f"\n\n**Fix.** {entry.fix}"
    help_text += f"\n\nMore: gradcheck explain {kind.value}"
    help_markdown += f"\n\nMore: `gradcheck explain {kind.value}`"
    return {
        "id": kind.value,
        "name": "".join(part.capitalize() for part in kind.value.split("-")),
        "shortDescription": {"text": entry.title},
        "fullDescription": {"text": entry.summary},
        "help": {"text": help_text, "markdown": help_markdown},
        "defaultConfiguration": {"level": DEFAULT_LEVELS[kind]},
        "properties": {"tags": ["gradient", "pytorch"]},
    }


def _result(finding: Finding, scan: ScanResult, known: frozenset[str],
            base: PurePath) -> dict[str, Any]:
    location: dict[str, Any] = {
        "logicalLocations": [{
            "name": finding.layer if finding.layer is not None else "(whole model)",
            "fullyQualifiedName": finding.layer if finding.layer is not None else "(whole model)",
            "kind": "member" if finding.layer is not None else "module",
        }],
    }
    path = target_file(scan.target)
    if path is not None:
        location["physicalLocation"] = {"artifactLocation": {"uri": _uri(path, base)}}
    result: dict[str, Any] = {
        "ruleId": finding.kind.value,
        "ruleIndex": RULE_ORDER.index(finding.kind),
        "level": LEVELS[finding.severity],
        "message": {"text": finding.message},
        "locations": [location],
        "partialFingerprints": {FINGERPRINT_KEY: fingerprint(finding)},
        "properties": {
            "scan": scan.name,
            "target": scan.target,
            "layer": finding.layer,
            "severity": finding.severity.value,
            "evidence": {key: _number(value) for key, value in finding.evidence.items()},
        },
    }
    for key, value in (("step", finding.step), ("rank", finding.rank)):  # a watch report's finding
        if value is not None:
            result["properties"][key] = value
    if scan.report is not None:
        _add_verification(result, answering(finding, scan.report.recommendations))
    if known:
        result["baselineState"] = "unchanged" if fingerprint(finding) in known else "new"
    return result


def _add_verification(result: dict[str, Any], recommendations: list[Recommendation]) -> None:
    """--verify's measurements of the recommendations that answer this finding (none: unchanged)."""
    if not recommendations:
        return
    result["message"]["text"] += "\n\n" + "\n".join(fix_note(rec) for rec in recommendations)
    result["properties"]["verification"] = [
        {"recommendation": rec.id.value, "status": status_text(rec.verification),
         "summary": rec.verification.summary if rec.verification is not None else ""}
        for rec in recommendations]


def _uri(path: str, base: PurePath) -> str:
    """A relative URI when the file lies below ``base``, else the path as written."""
    pure = PurePath(path)
    if pure.is_absolute():
        try:
            pure = pure.relative_to(base)
        except ValueError:
            return Path(pure).as_uri()
    return quote(pure.as_posix())


def _number(value: Number) -> Number:
    """JSON has no NaN/Infinity: write them as strings, as report@1 does."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value
