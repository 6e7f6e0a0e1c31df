"""The output formats: golden files for fixed results, SARIF against the official 2.1.0 schema,
JUnit parsed with the standard library, GitHub workflow-command escaping, Markdown tables."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath

import jsonschema
import pytest
from format_reports import (
    errored_result,
    exploding_report,
    exploding_result,
    healthy_result,
    run_results,
)

from gradcheck_cli.report.catalog import FINDINGS
from gradcheck_cli.report.records import FindingKind, ScanResult
from gradcheck_cli.report.render import OutputFormat, render
from gradcheck_cli.report.render.github import command, escape_data, escape_property, render_github
from gradcheck_cli.report.render.markdown import cell, code_span, render_markdown
from gradcheck_cli.report.render.sarif import render_sarif

SARIF_SCHEMA = json.loads((Path(__file__).parent / "data" / "sarif-schema-2.1.0.json").read_text(encoding="utf-8"))
KNOWN = frozenset({"exploding:net.0", "exploding:net.2"})
"""A baseline that accepts the two exploding layers but not the divergence."""


# --- golden files: one per format for the fixed three-scan run, and the single scan ---------


def _without_rule_text(sarif: str) -> str:
    """The SARIF log with the rules' catalogue text replaced by a marker: the catalogue's wording
    changes on its own schedule, and test_sarif_has_one_rule_per_finding_kind_with_catalogue_help
    checks that text against the catalogue itself."""
    log = json.loads(sarif)
    for rule in log["runs"][0]["tool"]["driver"]["rules"]:
        for key in ("shortDescription", "fullDescription", "help"):
            rule[key] = {field: "<catalog.FINDINGS text>" for field in rule[key]}
    return json.dumps(log, indent=2, ensure_ascii=False) + "\n"


@pytest.mark.parametrize("fmt", [f for f in OutputFormat if f is not OutputFormat.TABLE])
def test_golden_run(fmt: OutputFormat, golden) -> None:  # type: ignore[no-untyped-def]
    text = render(run_results(), fmt, combined=True)
    golden(_without_rule_text(text) if fmt is OutputFormat.SARIF else text)


def test_golden_run_table(golden) -> None:  # type: ignore[no-untyped-def]
    golden(render(run_results(), OutputFormat.TABLE, combined=True, width=100))


def test_golden_single_markdown(golden) -> None:  # type: ignore[no-untyped-def]
    golden(render([exploding_result()], OutputFormat.MARKDOWN))


def test_golden_single_sarif_with_baseline(golden) -> None:  # type: ignore[no-untyped-def]
    golden(_without_rule_text(render([exploding_result()], OutputFormat.SARIF, known=KNOWN)))


def test_golden_single_junit_with_baseline(golden) -> None:  # type: ignore[no-untyped-def]
    golden(render([exploding_result()], OutputFormat.JUNIT, known=KNOWN))


@pytest.mark.parametrize("combined", [False, True])
@pytest.mark.parametrize("fmt", list(OutputFormat))
def test_every_format_renders_single_and_combined(fmt: OutputFormat, combined: bool) -> None:
    text = render([exploding_result()], fmt, combined=combined)
    assert text.endswith("\n") and text.strip()
    assert text == render([exploding_result()], fmt, combined=combined)  # deterministic


def test_single_json_is_exactly_report_at_1() -> None:
    result = exploding_result()
    assert result.report is not None
    assert json.loads(render([result], OutputFormat.JSON)) == json.loads(json.dumps(result.report.to_dict()))


def test_run_json_holds_every_scan_with_its_exit_code() -> None:
    document = json.loads(render(run_results(), OutputFormat.JSON, combined=True))
    assert document["schema"] == "gradcheck/run@1"
    assert document["tool"]["name"] == "gradcheck"
    assert [(s["name"], s["exit_code"]) for s in document["scans"]] == [("mlp", 1), ("he", 0), ("broken", 2)]
    assert document["scans"][0]["report"]["schema"] == "gradcheck/report@1"
    assert document["scans"][0]["error"] is None
    assert document["scans"][2]["report"] is None and "NameError" in document["scans"][2]["error"]
    # The baseline moves the failing scan to exit 0 only when it accepts every gated finding.
    with_baseline = json.loads(render(run_results(), OutputFormat.JSON, combined=True,
                                      known=KNOWN | {"divergence:-"}))
    assert [s["exit_code"] for s in with_baseline["scans"]] == [0, 0, 2]


def test_run_table_has_a_section_per_scan_and_an_overall_line() -> None:
    text = render(run_results(), OutputFormat.TABLE, combined=True, width=100)
    lines = text.splitlines()
    assert lines[-1] == "overall: 3 scans: 1 passed, 1 failed, 1 errored"
    assert any(line.startswith("scan 1/3: mlp (models/mlp.py:build_model)") for line in lines)
    assert any(line.startswith("scan 3/3: broken (models/broken.py)") for line in lines)
    assert "error: models/broken.py:3: NameError" in text
    assert all(len(line) <= 100 for line in lines)


def test_table_marks_baselined_findings() -> None:
    text = render([exploding_result()], OutputFormat.TABLE, width=200, known=KNOWN)
    net0 = next(line for line in text.splitlines() if "exploding at net.0" in line)
    assert "baselined" in net0
    divergence = next(line for line in text.splitlines() if "divergence (whole model)" in line)
    assert "baselined" not in divergence


# --- SARIF --------------------------------------------------------------------------------------


@pytest.mark.parametrize("known", [frozenset(), KNOWN])
@pytest.mark.parametrize("results", [run_results(), [exploding_result()], [healthy_result()], [errored_result()]],
                         ids=["run", "exploding", "healthy", "errored"])
def test_sarif_is_valid_against_the_official_schema(results: list[ScanResult], known: frozenset[str]) -> None:
    log = json.loads(render_sarif(results, known))
    validator = jsonschema.Draft4Validator(SARIF_SCHEMA, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(log), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


def test_schema_validation_catches_a_broken_log() -> None:
    # The validation above must be able to fail: a result without its message is rejected.
    log = json.loads(render_sarif([exploding_result()]))
    del log["runs"][0]["results"][0]["message"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(log, SARIF_SCHEMA, cls=jsonschema.Draft4Validator)


def test_sarif_has_one_rule_per_finding_kind_with_catalogue_help() -> None:
    run = json.loads(render_sarif([healthy_result()]))["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert [rule["id"] for rule in rules] == [kind.value for kind in FindingKind]
    for rule, kind in zip(rules, FindingKind):
        entry = FINDINGS[kind]
        assert rule["shortDescription"]["text"] == entry.title
        assert rule["fullDescription"]["text"] == entry.summary
        for part in (entry.summary, entry.mechanism, entry.fix):
            assert part in rule["help"]["text"] and part in rule["help"]["markdown"]
        assert f"gradcheck explain {kind.value}" in rule["help"]["text"]
        assert rule["defaultConfiguration"]["level"] in {"error", "warning", "note"}
    assert run["results"] == []
    assert run["invocations"] == [{"executionSuccessful": True}]


def test_sarif_results_point_to_their_rule_file_and_layer() -> None:
    run = json.loads(render_sarif([exploding_result()], cwd=PurePosixPath("/work")))["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    results = run["results"]
    assert [r["ruleId"] for r in results] == ["exploding", "exploding", "saturated-activation", "divergence"]
    for result in results:
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
        location = result["locations"][0]
        assert location["physicalLocation"]["artifactLocation"]["uri"] == "models/mlp.py"
    assert results[0]["locations"][0]["logicalLocations"] == [
        {"name": "net.0", "fullyQualifiedName": "net.0", "kind": "member"}]
    assert results[0]["level"] == "error" and results[2]["level"] == "warning"
    assert results[3]["partialFingerprints"] == {"gradcheck/v1": "divergence:-"}
    assert results[3]["properties"]["evidence"]["loss_after"] == "Infinity"
    assert "baselineState" not in results[0]


def test_sarif_fingerprints_ignore_the_numbers() -> None:
    def fingerprints(scale: float) -> list[dict[str, str]]:
        log = json.loads(render_sarif([exploding_result(scale)]))
        return [r["partialFingerprints"] for r in log["runs"][0]["results"]]

    assert fingerprints(1.0) == fingerprints(1.7)
    assert fingerprints(1.0)[0] == {"gradcheck/v1": "exploding:net.0"}


def test_sarif_paths_relative_to_cwd_and_builtins_logical_only() -> None:
    absolute = ScanResult("abs", "/work/repo/models/net.py:Net", exploding_report())
    outside = ScanResult("out", "/elsewhere/net.py", exploding_report())
    log = json.loads(render_sarif([absolute, outside, healthy_result()], cwd=PurePosixPath("/work/repo")))
    uris = {r["properties"]["scan"]: r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
            for r in log["runs"][0]["results"]}
    assert uris == {"abs": "models/net.py", "out": "file:///elsewhere/net.py"}
    builtin = ScanResult("b", "builtin:relu-normal-init", exploding_report())
    for result in json.loads(render_sarif([builtin]))["runs"][0]["results"]:
        assert set(result["locations"][0]) == {"logicalLocations"}


def test_sarif_errored_scan_is_a_failed_invocation() -> None:
    run = json.loads(render_sarif(run_results()))["runs"][0]
    invocation = run["invocations"][0]
    assert invocation["executionSuccessful"] is False
    [notification] = invocation["toolExecutionNotifications"]
    assert notification["level"] == "error"
    assert "broken" in notification["message"]["text"] and "NameError" in notification["message"]["text"]


def test_sarif_baseline_state() -> None:
    results = json.loads(render_sarif([exploding_result()], KNOWN))["runs"][0]["results"]
    assert [r["baselineState"] for r in results] == ["unchanged", "unchanged", "new", "new"]


# --- JUnit --------------------------------------------------------------------------------------


def _junit(results: list[ScanResult], known: frozenset[str] = frozenset()) -> ET.Element:
    return ET.fromstring(render(results, OutputFormat.JUNIT, combined=True, known=known))


def test_junit_parses_with_one_suite_per_scan_and_right_counts() -> None:
    root = _junit(run_results())
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["mlp", "he", "broken"]
    for suite in [root, *suites]:
        cases = list(suite.iter("testcase"))
        assert int(suite.get("tests", -1)) == len(cases)
        assert int(suite.get("failures", -1)) == sum(c.find("failure") is not None for c in cases)
        assert int(suite.get("errors", -1)) == sum(c.find("error") is not None for c in cases)
        assert int(suite.get("skipped", -1)) == sum(c.find("skipped") is not None for c in cases)
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("6", "4", "1")


def test_junit_testcases_per_scan_and_per_failing_finding() -> None:
    mlp, he, broken = _junit(run_results()).findall("testsuite")
    names = [case.get("name") for case in mlp.findall("testcase")]
    # saturated-activation does not match the gate (exploding, nonfinite, divergence): no testcase.
    assert names == ["gate", "exploding:net.0", "exploding:net.2", "divergence:-"]
    finding = mlp.findall("testcase")[1].find("failure")
    assert finding is not None
    assert finding.get("message") == "grad/weight 3e+03 > 1000: one SGD step would wreck the weights"
    assert finding.get("type") == "exploding"
    gate = mlp.find("testcase/failure")
    assert gate is not None and "exploding:net.0, exploding:net.2, divergence:-" in (gate.get("message") or "")
    assert [case.get("name") for case in he.findall("testcase")] == ["gate"]
    assert he.find("testcase/failure") is None
    error = broken.find("testcase/error")
    assert error is not None and "NameError" in (error.get("message") or "")


def test_junit_baselined_findings_are_skipped_not_failures() -> None:
    root = _junit([exploding_result()], KNOWN)
    suite = root.find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("4", "2", "2")
    gate = suite.find("testcase[@name='gate']/failure")
    assert gate is not None and (gate.get("message") or "").endswith(": divergence:-")
    everything = _junit([exploding_result()], KNOWN | {"divergence:-"})
    assert everything.get("failures") == "0" and everything.get("skipped") == "3"


def test_junit_fail_on_any_makes_every_finding_a_testcase() -> None:
    report = exploding_report()
    report = type(report)(**{**report.__dict__, "config": {**report.config, "fail_on": ["any"]}})
    root = _junit([ScanResult("mlp", report.target, report)])
    assert root.get("tests") == "5" and root.get("failures") == "5"


# --- GitHub workflow commands -------------------------------------------------------------------


@pytest.mark.parametrize(("text", "data", "prop"), [
    ("plain", "plain", "plain"),
    ("100% sure", "100%25 sure", "100%25 sure"),
    ("a\nb\r\nc", "a%0Ab%0D%0Ac", "a%0Ab%0D%0Ac"),
    ("key: a, b", "key: a, b", "key%3A a%2C b"),
    ("%0A literal", "%250A literal", "%250A literal"),
    ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m", "\\x1b[31mred\\x1b[0m"),
])
def test_github_escaping(text: str, data: str, prop: str) -> None:
    assert escape_data(text) == data
    assert escape_property(text) == prop


def test_github_command_layout() -> None:
    assert command("error", "x: 1%", title="t:1", file="a,b.py") == "::error title=t%3A1,file=a%2Cb.py::x: 1%25"
    assert command("notice", "hello") == "::notice::hello"


def test_github_one_line_per_finding_with_levels_and_file() -> None:
    lines = render_github([exploding_result()]).splitlines()
    assert len(lines) == 4
    assert [line.split(" ", 1)[0] for line in lines] == ["::error", "::error", "::warning", "::error"]
    assert all("file=models/mlp.py" in line for line in lines)
    assert lines[2].endswith("::95%25 of outputs saturated,%0Aderivative near 0: check the init")
    assert "title=gradcheck%3A divergence (whole model)" in lines[3]


def test_github_baselined_findings_are_notices_and_errored_scans_errors() -> None:
    lines = render_github(run_results(), KNOWN).splitlines()
    assert lines[0].startswith("::notice ") and "(baselined)" in lines[0]
    assert lines[3].startswith("::error ")  # divergence is not in the baseline
    assert lines[-1].startswith("::error title=gradcheck%3A scan broken failed,file=models/broken.py::")
    assert not any("builtin" in line for line in lines)  # the healthy builtin scan has nothing to say


# --- Markdown -----------------------------------------------------------------------------------


def _pipes(row: str) -> int:
    return len(re.findall(r"(?<!\\)\|", row))


def test_markdown_table_rows_keep_their_columns() -> None:
    text = render_markdown(run_results())
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert rows
    tables: dict[int, int] = {}
    for line in text.splitlines():
        if line.startswith("| ---") or line.startswith("| --:"):
            tables[len(tables)] = _pipes(line)
    widths = set(tables.values())
    for row in rows:
        assert _pipes(row) in widths, row
    assert not re.search(r"(?<!\\)\| grows 4x", text) and "\\| grows 4x" in text
    assert "Linear\\|Head" in text


def test_markdown_has_summary_findings_and_fenced_snippets() -> None:
    text = render_markdown(run_results())
    assert text.startswith("## gradcheck: 3 scans — 1 passed, 1 failed, 1 errored\n")
    assert "| mlp | `models/mlp.py:build_model` | exploding | ❌ fail |" in text
    assert "   ```python\n   torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)\n   ```" in text
    # A snippet holding ``` gets a longer fence, so the block does not end early.
    assert "   ````python\n   optimizer = torch.optim.SGD" in text
    assert "<details><summary>Layers (3)</summary>" in text
    assert "> models/broken.py:3: NameError" in text


def test_markdown_helpers() -> None:
    assert cell("a|b\nc") == "a\\|b c"
    assert code_span("x`y") == "``x`y``"
    assert code_span("net.0") == "`net.0`"
