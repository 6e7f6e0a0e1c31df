"""The JUnit XML renderer, for the test-report views of CI systems (GitLab, Jenkins, Azure).

``<testsuites>`` holds one ``<testsuite>`` per scan. Each suite has a testcase named "gate" (a
failure when the scan fails its gate, an error when the scan could not run) and one testcase per
finding that fails the gate, named by its fingerprint (kind:layer, stable from run to run so CI
history lines up), with the finding's message as the failure message and its evidence as the
body. A finding the baseline knows is a skipped testcase, never a failure. The count attributes
(tests, failures, errors, skipped) are computed from the testcases written.
Control characters in any text (an ANSI colour
code in a user's error message) are written as visible escapes (common.visible): XML 1.0 cannot
hold them, and one would make the whole file unparseable.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from gradcheck_cli.report.gate import failing_findings, fingerprint, matches, scan_exit_code
from gradcheck_cli.report.records import Finding, ScanResult
from gradcheck_cli.report.render.common import format_number, visible


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
            names = ", ".join(fingerprint(f) for f in failing)
            failure = ET.SubElement(
                gate, "failure", type="gate",
                message=f"verdict {report.verdict.value}: {len(failing)} finding(s) fail the gate "
                        f"(fail_on: {','.join(fail_on)}): {names}")
            failure.text = "\n".join(f"{fingerprint(f)}: {f.message}" for f in failing)
        for finding in gated:
            suite.append(_finding_case(finding, result.name, known))
    cases = suite.findall("testcase")
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(sum(1 for case in cases if case.find("failure") is not None)))
    suite.set("errors", str(sum(1 for case in cases if case.find("error") is not None)))
    suite.set("skipped", str(sum(1 for case in cases if case.find("skipped") is not None)))
    return suite


def _finding_case(finding: Finding, classname: str, known: frozenset[str]) -> ET.Element:
    case = ET.Element("testcase", name=fingerprint(finding), classname=classname)
    if fingerprint(finding) in known:
        ET.SubElement(case, "skipped", message="baselined: a known finding, accepted by --baseline")
        return case
    failure = ET.SubElement(case, "failure", message=finding.message, type=finding.kind.value)
    evidence = ", ".join(f"{key}={_value(value)}" for key, value in finding.evidence.items())
    failure.text = f"severity: {finding.severity.value}\nevidence: {evidence or '-'}"
    return case


def _value(value: object) -> str:
    return format_number(value) if isinstance(value, float | int) and not isinstance(value, bool) \
        else str(value)
