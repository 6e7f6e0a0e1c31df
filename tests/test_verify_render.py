"""--verify in every output format: the table and Markdown (golden), GitHub, SARIF, JUnit and JSON,
and the `unverified` gate. Reports are hand-made (tests/verified_reports.py): no scan runs."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from format_reports import exploding_report, exploding_result, healthy_report
from verified_reports import (
    CHECK_INPUTS,
    CLIP,
    HE_INIT,
    LOWER_LR,
    NORMALIZATION,
    all_verified_report,
    nothing_helped_report,
    verified_report,
    verified_result,
)

from gradcheck_cli.report.gate import fails, unverified_recommendations, valid_fail_on_words
from gradcheck_cli.report.records import Report, ScanResult
from gradcheck_cli.report.render import OutputFormat, render
from gradcheck_cli.report.render.github import render_github
from gradcheck_cli.report.render.json import render_json
from gradcheck_cli.report.render.junit import render_junit
from gradcheck_cli.report.render.markdown import render_markdown
from gradcheck_cli.report.render.table import render_table
from gradcheck_cli.report.render.verified import group_recommendations

SARIF_SCHEMA = json.loads((Path(__file__).parent / "data" / "sarif-schema-2.1.0.json").read_text(encoding="utf-8"))


def _with_fail_on(report: Report, *words: str) -> Report:
    return replace(report, config={**report.config, "fail_on": list(words)})


# --- golden outputs -------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [80, 100])
def test_verified_table(golden: Any, width: int) -> None:
    golden(render_table(verified_report(), width=width, color=False))


def test_verified_table_nothing_helped(golden: Any) -> None:
    golden(render_table(nothing_helped_report(), width=80, color=False))


def test_verified_markdown(golden: Any) -> None:
    golden(render_markdown([verified_result()]))


# --- what the table says --------------------------------------------------------------------------


def test_table_header_counts_the_probe_batches_and_ends_with_the_combined_verdict() -> None:
    lines = render_table(verified_report(), width=100, color=False).splitlines()
    assert "recommendations (5, verified on the same 3 probe batches)" in lines
    assert "   verified: verdict exploding -> healthy; net.0 grad/weight 3.0e+03 -> 2.1e-03" in lines
    combined = lines.index("applied together: he-init + clip-gradients -> verdict healthy")
    assert lines[combined + 2].startswith("verdict: EXPLODING")  # the verdict line stays the last


def test_a_recommendation_that_did_not_help_is_never_shown_as_a_fix() -> None:
    text = render_table(verified_report(), width=100, color=False)
    heading = text.index("did not help when measured (2)")
    # Measured and not helping: after the fixes, under its heading, without a snippet to paste.
    for rec in (NORMALIZATION, LOWER_LR):
        assert text.index(f"[{rec.id.value}]") > heading
        assert rec.code not in text
    for rec in (HE_INIT, CLIP):
        assert text.index(f"[{rec.id.value}]") < heading
    assert "   no effect: verdict exploding -> exploding" in text
    assert "   made worse: verdict exploding -> nonfinite" in text
    # Not applicable is not "did not help": it was not measured; its advice (data) keeps its snippet.
    assert text.index("could not be verified (1)") < text.index("[check-inputs]")
    assert CHECK_INPUTS.code in text


def test_fixes_come_first_whatever_the_order_they_arrive_in() -> None:
    groups = group_recommendations((NORMALIZATION, CHECK_INPUTS, CLIP, HE_INIT, LOWER_LR))
    assert [(rank, rec.id.value) for rank, rec in groups.fixes] == [(1, "clip-gradients"), (2, "he-init")]
    assert [(rank, rec.id.value) for rank, rec in groups.not_verified] == [(3, "check-inputs")]
    assert [(rank, rec.id.value) for rank, rec in groups.did_not_help] == [(4, "add-normalization"),
                                                                           (5, "lower-lr")]
    text = render_table(replace(verified_report(), recommendations=(NORMALIZATION, HE_INIT)), width=100,
                        color=False)
    assert text.index("1. [he-init]") < text.index("did not help when measured (1)") < text.index(
        "2. [add-normalization]")


def test_nothing_helped_presents_no_fix() -> None:
    text = render_table(nothing_helped_report(), width=100, color=False)
    assert "none of them helped when measured" in text
    assert "applied together: none (no recommendation was verified)" in text
    assert NORMALIZATION.code not in text


def test_without_verification_every_format_is_unchanged() -> None:
    # A healthy model scanned with --verify: nothing to verify, so only the config says it ran;
    # no human format shows it, and the JSON gains only "verify": true in config.
    plain, verified = healthy_report(), healthy_report()
    verified = replace(verified, config={**verified.config, "verify": True})
    for fmt in OutputFormat:
        if fmt is OutputFormat.JSON:
            continue
        assert render([ScanResult("he", "builtin:relu-he", verified)], fmt) == \
            render([ScanResult("he", "builtin:relu-he", plain)], fmt), fmt
    document = json.loads(render_json(verified))
    assert document["config"]["verify"] is True
    assert "verification" not in document


def test_colour_marks_the_status() -> None:
    coloured = render_table(verified_report(), width=100, color=True)
    assert "\x1b[32mverified: verdict exploding -> healthy" in coloured  # green
    assert "\x1b[31mmade worse:" in coloured  # red


# --- machine formats ------------------------------------------------------------------------------


def test_markdown_shows_the_summaries_and_no_snippet_for_what_did_not_help() -> None:
    text = render_markdown([verified_result()])
    assert "**Recommendations (5, verified on the same 3 probe batches)**" in text
    assert "   <br>verified: verdict exploding -> healthy; net.0 grad/weight 3.0e+03 -> 2.1e-03" in text
    assert text.index("**Did not help when measured (2)**") < text.index("4. **add-normalization**")
    assert NORMALIZATION.code not in text
    assert "**Applied together: he-init + clip-gradients -> verdict healthy**" in text


def test_sarif_carries_the_verification_of_the_recommendations_that_answer_a_finding() -> None:
    log = json.loads(render([verified_result()], OutputFormat.SARIF))
    jsonschema.Draft4Validator(SARIF_SCHEMA).validate(log)
    results = {r["partialFingerprints"]["gradcheck/v1"]: r for r in log["runs"][0]["results"]}
    first = results["exploding:net.0"]
    assert first["message"]["text"].endswith(
        "\n\n[he-init] verified: verdict exploding -> healthy; net.0 grad/weight 3.0e+03 -> 2.1e-03\n"
        "[clip-gradients] partial: largest update/weight 4.1 -> 9.8e-04 over 2 sgd steps; divergence remains\n"
        "[add-normalization] did not help: no effect: verdict exploding -> exploding; "
        "net.0 grad/weight 3.0e+03 -> 2.9e+03")
    assert [(v["recommendation"], v["status"]) for v in first["properties"]["verification"]] == [
        ("he-init", "verified"), ("clip-gradients", "partial"), ("add-normalization", "no effect")]
    assert [v["recommendation"] for v in results["divergence:-"]["properties"]["verification"]] == \
        ["clip-gradients"]
    # A finding no recommendation answers is written as without --verify; fixes[] needs file edits.
    assert "verification" not in results["saturated-activation:head"]["properties"]
    assert all("fixes" not in r for r in results.values())


def test_sarif_without_verification_has_no_verification_property() -> None:
    log = json.loads(render([exploding_result()], OutputFormat.SARIF))
    assert all("verification" not in r["properties"] for r in log["runs"][0]["results"])


def test_junit_names_the_measurements() -> None:
    root = ET.fromstring(render_junit([verified_result()]))
    gate = root.find("testsuite/testcase[@name='gate']")
    assert gate is not None
    out = gate.findtext("system-out") or ""
    assert out.splitlines()[0] == \
        "[he-init] verified: verdict exploding -> healthy; net.0 grad/weight 3.0e+03 -> 2.1e-03"
    assert out.splitlines()[-1] == "applied together: he-init + clip-gradients -> verdict healthy"
    failure = root.findtext("testsuite/testcase[@name='exploding:net.2']/failure") or ""
    assert failure.splitlines()[-1] == \
        "recommendation: [he-init] verified: verdict exploding -> healthy; net.0 grad/weight 3.0e+03 -> 2.1e-03"


def test_junit_gate_names_unverified_recommendations() -> None:
    report = _with_fail_on(verified_report(), "unverified")
    root = ET.fromstring(render_junit([ScanResult("mlp", "m.py", report)]))
    failure = root.find("testsuite/testcase[@name='gate']/failure")
    assert failure is not None
    assert failure.get("message") == ("verdict exploding: 4 recommendation(s) not verified (fail_on: unverified): "
                                      "clip-gradients, check-inputs, add-normalization, lower-lr")


def test_github_writes_a_notice_per_recommendation_and_errors_for_the_unverified_gate() -> None:
    lines = render_github([verified_result()]).splitlines()
    assert "::notice title=gradcheck%3A he-init verified,file=models/mlp.py::verified: verdict exploding -> " \
           "healthy; net.0 grad/weight 3.0e+03 -> 2.1e-03" in lines
    assert lines[-1] == ("::notice title=gradcheck%3A verified fixes applied together,file=models/mlp.py::"
                         "applied together: he-init + clip-gradients -> verdict healthy")
    gated = render_github([ScanResult("mlp", "models/mlp.py", _with_fail_on(verified_report(), "unverified"))])
    levels = {line.split(" ")[0] for line in gated.splitlines() if "lower-lr made worse" in line}
    assert levels == {"::error"}


def test_json_has_a_verification_object_per_recommendation() -> None:
    document = json.loads(render_json(verified_report()))
    assert document["schema"] == "gradcheck/report@1"
    assert [r["verification"]["status"] for r in document["recommendations"]] == [
        "verified", "partial", "not applicable", "no effect", "made worse"]
    assert document["verification"]["applied"] == ["he-init", "clip-gradients"]
    assert document["config"]["verify"] is True
    assert "verify" not in json.loads(render_json(exploding_report()))["config"]


# --- the unverified gate --------------------------------------------------------------------------


def test_unverified_gate() -> None:
    assert "unverified" in valid_fail_on_words()
    assert fails(_with_fail_on(verified_report(), "unverified"))
    assert not fails(_with_fail_on(all_verified_report(), "unverified"))
    assert not fails(_with_fail_on(verified_report(), "none", "unverified"))
    # Without the word, unproven advice never fails a gate (vanishing: none of its findings).
    assert not fails(_with_fail_on(verified_report(), "vanishing"))
    # A recommendation without any verification is not proven either.
    unmeasured = replace(HE_INIT, verification=None)
    report = _with_fail_on(replace(all_verified_report(), recommendations=(unmeasured,)), "unverified")
    assert unverified_recommendations(report) == [unmeasured]
    # A baseline accepts findings, not advice.
    known = frozenset({"exploding:net.0", "exploding:net.2", "divergence:-"})
    assert fails(_with_fail_on(verified_report(), "exploding", "unverified"), known)
    assert not fails(_with_fail_on(all_verified_report(), "exploding", "unverified"), known)
