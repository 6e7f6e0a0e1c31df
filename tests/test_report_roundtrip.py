"""Report.from_dict (report/load.py): a saved JSON report reads back into the Report that wrote it.

The round trip is checked on the JSON text, byte for byte: every built-in's real scan report, the
hand-built --verify reports (every verification status, the combined line) and one with NaN and
Infinity in every field that can hold them.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from format_reports import exploding_report, healthy_report
from verified_reports import all_verified_report, nothing_helped_report, verified_report

from gradcheck_cli import scan
from gradcheck_cli.config import ScanConfig
from gradcheck_cli.report.load import ReportFormatError
from gradcheck_cli.report.records import SCHEMA, LayerReport, Report
from gradcheck_cli.report.render.json import render_json
from gradcheck_cli.report.series import LayerSeries, WatchSeries
from gradcheck_cli.target.zoo import BUILTINS


def _round_trip(report: Report) -> None:
    text = render_json(report)
    again = Report.from_dict(json.loads(text))
    assert render_json(again) == text
    assert again.verdict is report.verdict and len(again.findings) == len(report.findings)


@pytest.mark.parametrize("builtin", BUILTINS, ids=lambda b: b.name)
def test_every_builtin_report_round_trips(builtin) -> None:  # type: ignore[no-untyped-def]
    _round_trip(scan(f"builtin:{builtin.name}", ScanConfig(batches=2)))


@pytest.mark.parametrize("make", [exploding_report, healthy_report, verified_report, all_verified_report,
                                  nothing_helped_report])
def test_hand_built_reports_round_trip(make) -> None:  # type: ignore[no-untyped-def]
    _round_trip(make())


def test_non_finite_numbers_come_back_as_floats() -> None:
    report = exploding_report()
    layer = replace(report.layers[0], grad_norm=float("nan"), grad_to_weight=float("inf"),
                    activation={"rms": float("-inf"), "type": "ReLU"})
    report = replace(report, layers=(layer, *report.layers[1:]))
    again = Report.from_dict(json.loads(render_json(report)))
    back: LayerReport = again.layers[0]
    assert back.grad_norm != back.grad_norm  # NaN
    assert back.grad_to_weight == float("inf") and back.activation["rms"] == float("-inf")
    assert back.activation["type"] == "ReLU"
    assert render_json(again) == render_json(report)


@pytest.mark.parametrize(("document", "needle"), [
    ([], "not a gradcheck report"),
    ({"schema": "gradcheck/baseline@1"}, "not a gradcheck report"),
    ({"schema": SCHEMA}, "no 'target'"),
])
def test_a_document_that_is_not_a_report_says_so(document: object, needle: str) -> None:
    with pytest.raises(ReportFormatError, match=needle):
        Report.from_dict(document)


def test_a_malformed_field_is_named() -> None:
    document = exploding_report().to_dict()
    document["layers"][0]["index"] = "zero"
    with pytest.raises(ReportFormatError, match="expected an integer, got 'zero'"):
        Report.from_dict(document)
    document = exploding_report().to_dict()
    document["verdict"] = "sunny"
    with pytest.raises(ReportFormatError, match="sunny"):
        Report.from_dict(document)


def test_step_and_rank_only_in_watch_findings() -> None:
    report = exploding_report()
    assert all(set(f) == {"kind", "layer", "severity", "message", "evidence"}
               for f in report.to_dict()["findings"])  # a scan report's findings are as they were
    watched = replace(report.findings[0], step=120, rank=1)
    only_step = replace(report.findings[1], step=7)
    report = replace(report, findings=(watched, only_step, *report.findings[2:]))
    document = json.loads(render_json(report))
    assert (document["findings"][0]["step"], document["findings"][0]["rank"]) == (120, 1)
    assert document["findings"][1]["step"] == 7 and "rank" not in document["findings"][1]
    again = Report.from_dict(document)
    assert (again.findings[0].step, again.findings[0].rank, again.findings[1].rank) == (120, 1, None)
    _round_trip(report)


def test_the_table_and_markdown_say_when_a_finding_was_seen() -> None:
    from format_reports import exploding_result

    from gradcheck_cli.report.render import OutputFormat, render

    result = exploding_result()
    assert result.report is not None
    plain = render([result], OutputFormat.TABLE)
    first = replace(result.report.findings[0], step=120, rank=1)
    watched = replace(result, report=replace(result.report, findings=(first, *result.report.findings[1:])))
    assert "(step 120, rank 1)" not in plain
    assert f"exploding at {first.layer} (step 120, rank 1): grad/weight" in render([watched], OutputFormat.TABLE)
    assert f"at {first.layer} (step 120, rank 1)" in render([watched], OutputFormat.MARKDOWN)


def _series() -> WatchSeries:
    return WatchSeries(
        steps=(1, 50, 100), loss=(2.5, 1.25, float("nan")),
        layers=(LayerSeries("net.0", (0.5, 12.0, float("inf")), (1e-3, None, 2e-3), (4.0, 4.1, 4.2)),
                LayerSeries("net.2", (0.25, 0.5, None), (None, None, None), (1.0, 1.0, 1.0))))


def test_a_watch_report_keeps_its_series() -> None:
    report = exploding_report()
    assert "series" not in report.to_dict()  # a scan report is as it was
    watched = replace(report, series=_series())
    document = json.loads(render_json(watched))
    assert document["series"]["steps"] == [1, 50, 100] and document["series"]["loss"][2] == "NaN"
    assert document["series"]["layers"][0] == {"name": "net.0", "grad_norm": [0.5, 12.0, "Infinity"],
                                               "update_to_weight": [1e-3, None, 2e-3],
                                               "weight_norm": [4.0, 4.1, 4.2]}
    again = Report.from_dict(document)
    assert again.series is not None and again.series.layers[1].grad_norm == (0.25, 0.5, None)
    _round_trip(watched)


def test_series_values_align_with_the_steps() -> None:
    with pytest.raises(ValueError, match="one value per step"):
        WatchSeries((1, 2), (1.0,), ())
    document = replace(exploding_report(), series=_series()).to_dict()
    document["series"]["layers"][0]["weight_norm"].pop()
    with pytest.raises(ReportFormatError, match="one value per step"):
        Report.from_dict(document)
    document["series"]["layers"][0]["weight_norm"].append("big")
    with pytest.raises(ReportFormatError, match="'big'"):
        Report.from_dict(document)


def test_the_table_and_markdown_summarise_the_series() -> None:
    from format_reports import exploding_result

    from gradcheck_cli.report.render import OutputFormat, render

    result = exploding_result()
    assert result.report is not None and "watch:" not in render([result], OutputFormat.TABLE)
    watched = replace(result, report=replace(result.report, series=_series()))
    line = "watch: 3 sampled steps, 1–100 · loss 2.50 → NaN · largest grad_norm Inf at net.0 (step 100)"
    assert line in render([watched], OutputFormat.TABLE, width=200)
    assert line in render([watched], OutputFormat.MARKDOWN)


def test_sarif_results_carry_step_and_rank_when_known() -> None:
    from format_reports import exploding_result

    from gradcheck_cli.report.render import OutputFormat, render

    result = exploding_result()
    assert result.report is not None
    first = replace(result.report.findings[0], step=120, rank=1)
    watched = replace(result, report=replace(result.report, findings=(first, *result.report.findings[1:])))
    results = json.loads(render([watched], OutputFormat.SARIF))["runs"][0]["results"]
    assert (results[0]["properties"]["step"], results[0]["properties"]["rank"]) == (120, 1)
    assert "step" not in results[1]["properties"] and "rank" not in results[1]["properties"]
