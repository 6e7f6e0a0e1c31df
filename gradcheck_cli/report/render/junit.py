"""The JUnit XML renderer, for the test-report views of CI systems (GitLab, Jenkins, Azure).

``<testsuites>`` holds one ``<testsuite>`` per scan. Each suite has a testcase named "gate" (a
failure when the scan fails its gate, an error when the scan could not run) and one testcase per
finding that fails the gate, named by its fingerprint (kind:layer, stable from run to run so CI
history lines up), with the finding's message as the failure message and its evidence as the
body. A finding the baseline knows is a skipped testcase, never a failure. With --verify, the gate
testcase's ``<system-out>`` lists what each recommendation's verification measured and the verified
set applied together, a finding's failure text names the recommendations that answer it with their
measurement, and recommendations that ``--fail-on unverified`` fails on are named in the gate's
failure. The count attributes
(tests, failures, errors, skipped) are computed from the testcases written.
Control characters in any text (an ANSI colour
code in a user's error message) are written as visible escapes (common.visible): XML 1.0 cannot
hold them, and one would make the whole file unparseable.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from gradcheck_cli.report.gate import (
    failing_findings,
    fingerprint,
    matches,
    scan_exit_code,
    unverified_recommendations,
)
from gradcheck_cli.report.records import Finding, Recommendation, Report, ScanResult
from gradcheck_cli.report.render.common import format_number, visible
from gradcheck_cli.report.render.verified import answering, combined_text, fix_note, has_verification


def render_junit(results: Sequence[ScanResult], known: frozenset[str] = frozenset()) -> str:
    """The JUnit XML document, with an XML declaration, ending with a newline."""
    root = ET.Element("testsuites", name="gradcheck")
    for result in results:
        root.append(_suite(result, known))
    totals = {key: sum(int(suite.get(key, "0")) for suite in root)
              for key in ("tests", "failures", "errors", "skipped")}
    for key, value in totals.items():
        root.set(key, str(value))
    for element in root.iter():
        element.text = visible(element.text) if element.text else element.text
        element.attrib = {key: visible(value) for key, value in element.attrib.items()}
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _suite(result: ScanResult, known: frozenset[str]) -> ET.Element:
    suite = ET.Element("testsuite", name=result.name)
    properties = ET.SubElement(suite, "properties")
    ET.SubElement(properties, "property", name="target", value=result.target)
    gate = ET.SubElement(suite, "testcase", name="gate", classname=result.name)
    code = scan_exit_code(result, known)
    report = result.report
    if report is None:
        ET.SubElement(gate, "error", message=result.error or "the scan failed",
                      type="scan-error")
    else:
        fail_on = report.config.get("fail_on", ())
        ET.SubElement(properties, "property", name="verdict", value=report.verdict.value)
        ET.SubElement(properties, "property", name="fail_on", value=",".join(fail_on))
        gated = [f for f in report.findings if matches(f, fail_on)]
        failing = failing_findings(report, known)
        if code == 1:
            _gate_failure(gate, report, failing)
        for finding in gated:
            suite.append(_finding_case(finding, result.name, known, report.recommendations))
        if has_verification(report):
            ET.SubElement(gate, "system-out").text = _verification_text(report)
    cases = suite.findall("testcase")
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(sum(1 for case in cases if case.find("failure") is not None)))
    suite.set("errors", str(sum(1 for case in cases if case.find("error") is not None)))
    suite.set("skipped", str(sum(1 for case in cases if case.find("skipped") is not None)))
    return suite


def _gate_failure(gate: ET.Element, report: Report, failing: list[Finding]) -> None:
    fail_on = ",".join(report.config.get("fail_on", ()))
    reasons, lines = [], []
    if failing:
        reasons.append(f"{len(failing)} finding(s) fail the gate (fail_on: {fail_on}): "
                       + ", ".join(fingerprint(f) for f in failing))
        lines += [f"{fingerprint(f)}: {f.message}" for f in failing]
    unproven = unverified_recommendations(report)
    if unproven:  # only with --fail-on unverified: every other gate's message stays as it was
        reasons.append(f"{len(unproven)} recommendation(s) not verified (fail_on: {fail_on}): "
                       + ", ".join(rec.id.value for rec in unproven))
        lines += [fix_note(rec) for rec in unproven]
    failure = ET.SubElement(gate, "failure", type="gate",
                            message=f"verdict {report.verdict.value}: " + "; ".join(reasons))
    failure.text = "\n".join(lines)


def _verification_text(report: Report) -> str:
    """--verify's measurements: one line per recommendation, then the combined line."""
    lines = [fix_note(rec) for rec in report.recommendations]
    if report.verification is not None:
        lines.append(combined_text(report.verification))
    return "\n".join(lines)


def _finding_case(finding: Finding, classname: str, known: frozenset[str],
                  recommendations: tuple[Recommendation, ...] = ()) -> ET.Element:
    case = ET.Element("testcase", name=fingerprint(finding), classname=classname)
    if fingerprint(finding) in known:
        ET.SubElement(case, "skipped", message="baselined: a known finding, accepted by --baseline")
        return case
    failure = ET.SubElement(case, "failure", message=finding.message, type=finding.kind.value)
    evidence = ", ".join(f"{key}={_value(value)}" for key, value in finding.evidence.items())
    failure.text = f"severity: {finding.severity.value}\nevidence: {evidence or '-'}"
    for rec in answering(finding, recommendations):
        failure.text += f"\nrecommendation: {fix_note(rec)}"
    return case


def _value(value: object) -> str:
    return format_number(value) if isinstance(value, float | int) and not isinstance(value, bool) \
        else str(value)
