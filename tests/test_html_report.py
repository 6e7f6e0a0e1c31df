"""`--format html`: one self-contained page whose SVG charts carry the report's own numbers.

The charts are read back as XML (every chart is a well-formed <svg> element): each flow bar's
data-value is the report's float, and its drawn height is the log10 of that value on the panel's
scale, so the picture, not only an attribute, shows the number. Reports are built in code (no
scan runs) except for the end-to-end CLI tests on tiny builtins.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest
from format_reports import errored_result, exploding_report, exploding_result, healthy_result
from typer.testing import CliRunner
from verified_reports import verified_result

from gradcheck_cli.cli.app import app
from gradcheck_cli.report.charts import MAX_BARS
from gradcheck_cli.report.records import (
    Finding,
    FindingKind,
    LayerReport,
    LossInfo,
    Report,
    ScanResult,
    Severity,
    Status,
    ThroughTime,
)
from gradcheck_cli.report.render import OutputFormat, format_number, render
from gradcheck_cli.report.render.html import FOLD_HEALTHY_PAST
from gradcheck_cli.report.series import LayerSeries, WatchSeries

runner = CliRunner()
HOSTILE = "<img src=x onerror=alert(1)>"


def _layer(index: int, name: str, grad_norm: float | None, status: Status = Status.HEALTHY,
           weight_norm: float = 2.0, nonfinite: int = 0, through_time: ThroughTime | None = None) -> LayerReport:
    ratio = None if grad_norm is None else grad_norm / weight_norm
    return LayerReport(name, "Linear", index, 100, status, grad_norm, weight_norm, ratio, nonfinite,
                       through_time=through_time)


def _report(layers: tuple[LayerReport, ...], **changes: object) -> Report:
    report = Report("models/net.py", "0.1.0", {"batches": 3, "batch_size": 16, "seed": 0, "device": "cpu",
                                               "steps": 0, "fail_on": ["exploding", "nonfinite"]},
                    LossInfo("mse", (1.0, 0.9, 0.8)), Status.HEALTHY, layers, (), ())
    return replace(report, **changes)  # type: ignore[arg-type]


def _page(report: Report, known: frozenset[str] = frozenset()) -> str:
    return render([ScanResult(report.target, report.target, report)], OutputFormat.HTML, known=known)


def _charts(page: str, kind: str | None = None) -> list[ET.Element]:
    """Every inline <svg> of the page parsed as XML (fails if one is not well-formed)."""
    charts = [ET.fromstring(match) for match in re.findall(r"<svg\b.*?</svg>", page, flags=re.S)]
    return [c for c in charts if kind is None or c.get("data-chart") == kind]


def _bars(chart: ET.Element, metric: str) -> list[ET.Element]:
    (panel,) = [g for g in chart.iter("g") if g.get("class") == "panel" and g.get("data-metric") == metric]
    return [r for r in panel.iter("rect") if "bar" in (r.get("class") or "").split()]


def _classes(element: ET.Element) -> list[str]:
    return (element.get("class") or "").split()


# --- the flow chart carries the report's numbers --------------------------------------------------


GRAD_NORMS = (3.0e-9, 0.25, 1.5e4, 7.0e-4, 0.031, 2.0)
"""Out of order, across 13 decades, so the drawing's order is not the layer order."""


def test_every_bar_carries_its_layers_number_in_both_panels() -> None:
    layers = tuple(_layer(i, f"block.{i}", g) for i, g in enumerate(GRAD_NORMS))
    layers += (_layer(len(layers), "transformer.encoder.layers.11.self_attn.out_proj", 0.5),)
    (flow,) = _charts(_page(_report(layers)), "flow")
    names = [t.text for g in flow.iter("g") if g.get("class") == "x-labels"
             for t in g.iter("text") if "tick" in _classes(t)]
    assert names[:-1] == [f"block.{i}" for i in range(len(GRAD_NORMS))]
    assert names[-1] == "…11.self_attn.out_proj"  # a long name keeps the end that tells siblings apart
    for metric in ("grad_norm", "grad_to_weight"):
        bars = _bars(flow, metric)
        assert [b.get("data-layer") for b in bars] == [layer.name for layer in layers]
        assert [float(b.get("data-value", "")) for b in bars] == [getattr(layer, metric) for layer in layers]
        assert all(b.get("data-count") == "1" and b.get("data-status") == "healthy" for b in bars)


@pytest.mark.parametrize("metric", ["grad_norm", "grad_to_weight"])
def test_bar_heights_are_the_log_of_the_value_on_one_scale(metric: str) -> None:
    """A larger value is a taller bar ending higher up, and height differences are proportional
    to differences of log10: the same pixels per decade for every pair of bars."""
    layers = tuple(_layer(i, f"block.{i}", g) for i, g in enumerate(GRAD_NORMS))
    bars = _bars(_charts(_page(_report(layers)), "flow")[0], metric)
    points = sorted((math.log10(float(b.get("data-value", ""))), float(b.get("height", "")), float(b.get("y", "")))
                    for b in bars)
    heights, tops = [p[1] for p in points], [p[2] for p in points]
    assert heights == sorted(heights) and len(set(heights)) == len(heights)
    assert tops == sorted(tops, reverse=True)
    assert all(abs(p[1] + p[2] - (points[0][1] + points[0][2])) < 0.02 for p in points)  # one floor
    per_decade = (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])
    for low, high in zip(points, points[1:]):
        assert (high[1] - low[1]) == pytest.approx(per_decade * (high[0] - low[0]), abs=0.02)


def _threshold_lines(page: str) -> dict[str, ET.Element]:
    (flow,) = _charts(page, "flow")
    (panel,) = [g for g in flow.iter("g") if g.get("data-metric") == "grad_to_weight"]
    return {line.get("data-threshold", ""): line for line in panel.iter("line") if "threshold" in _classes(line)}


@pytest.mark.parametrize(("config", "vanish", "explode"), [
    ({}, 1e-7, 1e3),
    ({"thresholds": {"vanish_grad_to_weight": 1e-5, "explode_grad_to_weight": 10.0}}, 1e-5, 10.0),
])
def test_threshold_lines_at_the_reports_thresholds(config: dict[str, object], vanish: float, explode: float) -> None:
    """The lines sit where a bar of exactly the threshold's value would end, and say so in text."""
    layers = (_layer(0, "at-vanish", vanish * 2.0), _layer(1, "at-explode", explode * 2.0), _layer(2, "mid", 0.5))
    report = _report(layers)
    page = _page(replace(report, config={**report.config, **config}))
    lines = _threshold_lines(page)
    assert set(lines) == {"vanish_grad_to_weight", "explode_grad_to_weight"}
    assert float(lines["vanish_grad_to_weight"].get("data-value", "")) == vanish
    assert float(lines["explode_grad_to_weight"].get("data-value", "")) == explode
    bars = {b.get("data-layer"): b for b in _bars(_charts(page, "flow")[0], "grad_to_weight")}
    for name, key in (("at-vanish", "vanish_grad_to_weight"), ("at-explode", "explode_grad_to_weight")):
        assert float(bars[name].get("y", "")) == pytest.approx(float(lines[key].get("y1", "")), abs=0.02)
    assert f"vanishing below {format_number(vanish)}" in page and f"exploding above {format_number(explode)}" in page


def test_a_thousand_layers_stay_a_bounded_picture_with_grouped_bars() -> None:
    layers = tuple(_layer(i, f"layers.{i}", 10.0 ** (-(i % 9)), Status.VANISHING if i % 9 > 7 else Status.HEALTHY)
                   for i in range(1000))
    page = _page(_report(layers, verdict=Status.VANISHING))
    for chart in _charts(page):
        assert int(chart.get("width", "")) <= 1200 and int(chart.get("height", "")) <= 900
    (flow,) = _charts(page, "flow")
    for metric in ("grad_norm", "grad_to_weight"):
        bars = _bars(flow, metric)
        assert len(bars) <= MAX_BARS
        assert sum(int(b.get("data-count", "")) for b in bars) == 1000
    # A grouped bar shows its median's grad/weight; its range line spans the group's smallest to largest.
    ranges = {line.get("data-layer"): line for line in flow.iter("line") if "range" in _classes(line)}
    for bar in _bars(flow, "grad_to_weight"):
        line = ranges[bar.get("data-layer")]
        assert float(line.get("data-low", "")) <= float(bar.get("data-value", "")) <= float(line.get("data-high", ""))
        assert float(line.get("y1", "")) + 0.01 >= float(bar.get("y", "")) >= float(line.get("y2", "")) - 0.01
    flagged = sum(1 for layer in layers if layer.status is not Status.HEALTHY)
    assert 0 < flagged < FOLD_HEALTHY_PAST < 1000
    # The flagged layers in a table of their own, then every layer's row in the folded one.
    before, folded = page.split("<details><summary>All 1000 layers</summary>")
    assert before.count('<tr><td class="num">') == flagged and folded.count('<tr><td class="num">') == 1000


def test_nonfinite_layers_are_marked_in_text_never_drawn_as_a_bar() -> None:
    nan, inf = float("nan"), float("inf")
    layers = (_layer(0, "enc", nan, Status.NONFINITE, nonfinite=816), _layer(1, "mid", inf, Status.NONFINITE),
              _layer(2, "head", 0.3), _layer(3, "frozen", None, Status.FROZEN))
    page = _page(_report(layers, verdict=Status.NONFINITE))
    (flow,) = _charts(page, "flow")
    bars = {b.get("data-layer"): b for b in _bars(flow, "grad_norm")}
    assert bars["enc"].get("data-value") == "nan" and bars["mid"].get("data-value") == "inf"
    assert bars["frozen"].get("data-value") == ""
    for name in ("enc", "mid", "frozen"):
        assert "missing" in _classes(bars[name]) and float(bars[name].get("height", "")) == 0
    assert float(bars["head"].get("height", "")) > 0
    marks = {t.get("data-layer"): t.text for t in flow.iter("text") if "mark" in _classes(t)
             and t.get("data-layer") and t in _panel_children(flow, "grad_norm")}
    assert marks["enc"] == "NaN" and marks["mid"] == "Inf NaN" and marks["frozen"] == "— F"
    geometry = re.findall(r'\b(?:x|y|x1|y1|x2|y2|width|height|cx|cy|points)="([^"]*)"', page)
    assert geometry and not [value for value in geometry if re.search(r"nan|inf", value, re.I)]


def _panel_children(chart: ET.Element, metric: str) -> list[ET.Element]:
    (panel,) = [g for g in chart.iter("g") if g.get("data-metric") == metric]
    return list(panel.iter())


def test_every_unhealthy_bar_has_a_glyph_and_the_legend_explains_it() -> None:
    page = render([exploding_result()], OutputFormat.HTML)
    (flow,) = _charts(page, "flow")
    glyphs = [t.text for t in _panel_children(flow, "grad_norm") if "status" in _classes(t)]
    assert glyphs == ["E", "E"]  # net.0 and net.2 explode; the healthy head has none
    legend = [t.text for g in flow.iter("g") if g.get("class") == "legend" for t in g.iter("text")]
    assert legend == ["healthy", "E = exploding"]
    fills = {b.get("data-status"): b.get("fill") for b in _bars(flow, "grad_norm")}
    assert fills["exploding"] != fills["healthy"] and "url(#" in (fills["exploding"] or "")


# --- through time and over steps ---------------------------------------------------------------


def test_through_time_points_carry_the_profile_and_the_horizon_is_drawn() -> None:
    profile = tuple(10.0 ** (-0.3 * k) for k in reversed(range(20)))  # far end first, rising to the loss
    rnn = _layer(0, "rnn", 0.4, Status.VANISHING, through_time=ThroughTime(profile, "last", 5))
    page = _page(_report((rnn, _layer(1, "head", 0.5)), verdict=Status.VANISHING))
    (chart,) = _charts(page, "through-time")
    assert chart.get("data-layer") == "rnn"
    points = [c for c in chart.iter("circle") if "point" in _classes(c)]
    assert [float(c.get("data-value", "")) for c in points] == list(profile)
    ys = [float(c.get("cy", "")) for c in points]
    assert ys == sorted(ys, reverse=True)  # a larger gradient is drawn higher
    (horizon,) = [line for line in chart.iter("line") if "horizon" in _classes(line)]
    assert horizon.get("data-value") == "5"
    xs = [float(c.get("cx", "")) for c in points]
    assert float(horizon.get("x1", "")) == pytest.approx(xs[-1 - 5], abs=0.02)  # 5 steps back from the near end


def _watch_report() -> Report:
    steps = tuple(range(0, 100, 10))
    layers = tuple(LayerSeries(f"l{i}", tuple(0.1 * (i + 1) * (1 + s / 100) for s in steps),
                               (None,) * len(steps), (None,) * len(steps)) for i in range(10))
    loss = tuple(2.0 - s / 100 for s in steps[:-1]) + (float("nan"),)
    report = _report(tuple(_layer(i, f"l{i}", 0.1 * (i + 1)) for i in range(10)),
                     config={"mode": "watch", "steps": 100, "optimizer": "SGD", "every": 10, "device": "cpu",
                             "fail_on": ["exploding"]},
                     series=WatchSeries(steps, loss, layers))
    return report


def test_a_watch_report_has_its_loss_and_step_norm_charts() -> None:
    page = _page(_watch_report())
    assert "watched: 100 steps of SGD, every=10, cpu" in page
    (loss,) = _charts(page, "loss")
    (norms,) = _charts(page, "step-norms")
    series = [g for g in norms.iter("g") if g.get("class") == "series"]
    assert len(series) == 8 and norms.find("polygon") is not None  # 8 lines, the other 2 in the band
    assert "2 more not drawn as lines" in ET.tostring(norms, encoding="unicode")
    assert [t.text for t in loss.iter("text") if "missing" in _classes(t)] == ["NaN"]  # the last loss


def test_a_watch_stopped_before_its_first_step_has_no_charts_over_steps() -> None:
    empty = WatchSeries((), (), (LayerSeries("l0", (), (), ()),))
    page = _page(replace(_watch_report(), series=empty))
    assert len(_charts(page, "flow")) == 1 and not _charts(page, "loss") and not _charts(page, "step-norms")
    assert "watch: no steps" in page


# --- the page -----------------------------------------------------------------------------------


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _tags(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(page)
    return parser.tags


def test_the_page_is_self_contained_without_script_or_network() -> None:
    for page in (render([exploding_result()], OutputFormat.HTML), _page(_watch_report()),
                 render([verified_result()], OutputFormat.HTML)):
        assert "<script" not in page.lower() and "@import" not in page and "@font-face" not in page
        assert not re.search(r"https?://", page)
        references = [value for _, attrs in _tags(page) for key, value in attrs.items()
                      if key in ("src", "href", "xlink:href")]
        assert all((value or "").startswith("#") for value in references)
        assert all(url.startswith("#") for url in re.findall(r"url\(([^)]*)\)", page))


def test_report_text_is_escaped() -> None:
    evil = _layer(0, HOSTILE, 0.2, Status.EXPLODING)
    finding = Finding(FindingKind.EXPLODING, HOSTILE, Severity.ERROR, "a </table><script>x</script> & more", {})
    page = _page(_report((evil,), target=f"m.py:{HOSTILE}", findings=(finding,), verdict=Status.EXPLODING))
    assert HOSTILE not in page and "<script>" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert not [tag for tag, _ in _tags(page) if tag in ("img", "script")]
    (flow,) = _charts(page, "flow")
    assert {b.get("data-layer") for b in _bars(flow, "grad_norm")} == {HOSTILE}  # the name, read back intact


def test_same_report_same_bytes_also_read_back_from_json() -> None:
    result = verified_result()
    assert result.report is not None
    page = render([result], OutputFormat.HTML)
    assert page == render([result], OutputFormat.HTML)
    again = Report.from_dict(result.report.to_dict())
    assert render([ScanResult(result.name, result.target, again)], OutputFormat.HTML) == page


def test_a_recipe_run_is_one_page_with_a_section_per_scan() -> None:
    page = render([exploding_result(), errored_result()], OutputFormat.HTML, combined=True)
    assert page.count("<html") == 1 and page.count('<section id="scan-') == 2
    assert '<a href="#scan-1">mlp</a>' in page and '<a href="#scan-2">broken</a>' in page
    assert "2 scans: 0 passed, 1 failed, 1 errored" in page
    assert "NameError: name &#x27;nn&#x27; is not defined" in page  # the failed scan's error line
    assert len(_charts(page, "flow")) == 1  # only the scan that ran has charts
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))  # two scans' charts never share an id


def test_baselined_findings_are_marked() -> None:
    page = render([exploding_result()], OutputFormat.HTML, known=frozenset({"exploding:net.0"}))
    rows = re.findall(r"<tr><td>error</td><td>exploding</td><td>at (net\.\d)</td>.*?<td class=\"[^\"]*\">(\w+)</td>",
                      page)
    assert rows == [("net.0", "baselined"), ("net.2", "fails")]


def test_verification_before_and_after_is_shown() -> None:
    page = render([verified_result()], OutputFormat.HTML)
    assert "verification: <strong>verified</strong>" in page and "made worse" in page
    assert "<td>grad_to_weight</td><td>net.0</td><td class=\"num\">3.0e+03</td><td class=\"num\">2.1e-03</td>" in page
    assert "Applied together: he-init + clip-gradients -&gt; verdict healthy" in page


def test_accessible_structure() -> None:
    page = render([exploding_result(), healthy_result()], OutputFormat.HTML, combined=True)
    assert page.startswith('<!DOCTYPE html>\n<html lang="en">') and "<title>gradcheck: 2 scans</title>" in page
    levels = [int(tag[1]) for tag, _ in _tags(page) if re.fullmatch(r"h[1-6]", tag)]
    assert levels[0] == 1 and all(b - a <= 1 for a, b in zip(levels, levels[1:]))  # no skipped level
    for chart in _charts(page):
        title = chart.find("title")
        assert chart.get("role") == "img" and title is not None and title.text
        assert chart.get("aria-labelledby") == title.get("id") and chart.find("desc") is not None
    assert all(attrs.get("scope") in ("col", "row") for tag, attrs in _tags(page) if tag == "th")
    assert "[E] exploding" in page and "[E] EXPLODING" in page  # status in words, not colour alone


def test_golden_flow_svg_structure(golden) -> None:  # type: ignore[no-untyped-def]
    """The skeleton of the flow chart of a 3-layer report: elements, classes, data-* and text, no coordinates."""
    (flow,) = _charts(render([ScanResult("mlp", "m.py", exploding_report())], OutputFormat.HTML), "flow")
    kept = ("class", "id", "role", "aria-labelledby", "aria-describedby")
    lines: list[str] = []

    def walk(element: ET.Element, depth: int) -> None:
        attrs = " ".join(f'{k}="{v}"' for k, v in sorted(element.attrib.items())
                         if k in kept or k.startswith("data-"))
        text = (element.text or "").strip()
        lines.append("  " * depth + f"<{element.tag}{' ' + attrs if attrs else ''}>" + (f" {text}" if text else ""))
        for child in element:
            if child.tag != "defs":
                walk(child, depth + 1)

    walk(flow, 0)
    golden("\n".join(lines) + "\n")


# --- end to end ---------------------------------------------------------------------------------


def test_scan_and_report_write_the_same_page(tmp_path: Path) -> None:
    page, saved = tmp_path / "r.html", tmp_path / "r.json"
    scan = ["scan", "builtin:deep-sigmoid", "--batches", "1", "--batch-size", "4"]
    result = runner.invoke(app, [*scan, "--format", "html", "-o", str(page)])
    assert result.exit_code == 0, result.output  # vanishing does not fail the default gate
    assert "wrote the html report to" in result.stderr
    assert runner.invoke(app, [*scan, "--format", "json", "-o", str(saved), "-q"]).exit_code == 0
    reported = runner.invoke(app, ["report", str(saved), "--format", "html"])
    assert reported.exit_code == 0 and reported.stdout == page.read_text(encoding="utf-8")
    (flow,) = _charts(reported.stdout, "flow")
    assert len(_bars(flow, "grad_norm")) == 10  # deep-sigmoid: 10 Linear layers
    assert runner.invoke(app, ["scan", "builtin:nan-log", "--batches", "1", "--format", "html"]).exit_code == 1


# --- the charts as a person reads them (labels apart, marks legible, bars bounded) ----------------


def _frame(chart: ET.Element, metric: str) -> ET.Element:
    (frame,) = [r for r in _panel_children(chart, metric) if "frame" in _classes(r)]
    return frame


def test_end_of_line_labels_are_spread_apart_and_joined_to_their_lines() -> None:
    """Ten layers whose norms end within a twentieth of a decade of each other: every label at
    least 11 px from the next, and one moved off its line's end has a leader from that end."""
    (norms,) = _charts(_page(_watch_report()), "step-norms")
    ends, labels = [], []
    for series in (g for g in norms.iter("g") if g.get("class") == "series"):
        (polyline,) = series.iter("polyline")
        x, y = map(float, (polyline.get("points") or "").split()[-1].split(","))
        (label,) = [t for t in series.iter("text") if "line-label" in _classes(t)]
        at = float(label.get("y", ""))
        leaders = [line for line in series.iter("line") if "leader" in _classes(line)]
        if abs(at - y) > 2:
            assert [(float(leaders[0].get("y1", "")), float(leaders[0].get("y2", "")))] == [(y, at)]
            assert float(leaders[0].get("x1", "")) == pytest.approx(x + 1)
        ends.append(y)
        labels.append(at)
    assert max(ends) - min(ends) < 8 * 11  # the ends alone are too close for 8 labels
    gaps = [b - a for a, b in zip(sorted(labels), sorted(labels)[1:])]
    assert len(labels) == 8 and min(gaps) >= 11, gaps
    order = sorted(range(8), key=lambda i: (ends[i], i))
    assert [labels[i] for i in order] == sorted(labels)  # the labels keep their lines' order


def _own_text(element: ET.Element) -> str:
    """An element's text without its <title> tooltip."""
    title = element.find("title")
    return ((element.text or "") + (title.tail or "" if title is not None else "")).strip()


def _thin_report() -> Report:
    """600 layers (200 bars of 3): layers 0..299 vanishing, 450..452 exploding, 453..599 healthy."""
    def status(i: int) -> Status:
        return Status.VANISHING if i < 300 else Status.EXPLODING if 450 <= i < 453 else Status.HEALTHY
    layers = tuple(_layer(i, f"blocks.{i}", 10 ** (-9 + 8 * i / 600), status(i)) for i in range(600))
    return _report(layers, verdict=Status.EXPLODING)


def test_thin_bars_get_one_mark_per_run_of_a_status() -> None:
    """Bars ~3 px wide: one mark per run of bars with the same status ("V ×100" over a bracket
    spanning the run), not one glyph per bar; every bar keeps its own data attributes; the thin
    bars get the lighter pattern."""
    (flow,) = _charts(_page(_thin_report()), "flow")
    for metric in ("grad_norm", "grad_to_weight"):
        children = _panel_children(flow, metric)
        marks = [t for t in children if t.tag == "text" and "mark" in _classes(t)]
        assert [_own_text(t) for t in marks] == ["V ×100", "E"]  # bars marked (of 3 layers each)
        runs = [g for g in children if g.tag == "g" and g.get("class") == "mark-run"]
        assert [(g.get("data-first"), g.get("data-last"), g.get("data-layers")) for g in runs] == \
            [("blocks.0 … blocks.2", "blocks.297 … blocks.299", "300"), ("blocks.450 … blocks.452",) * 2 + ("3",)]
        bars = _bars(flow, metric)
        assert len(bars) == MAX_BARS and float(bars[0].get("width", "")) < 4
        (bracket,) = [p for p in runs[0].iter("path") if "run-bracket" in _classes(p)]
        span = [float(v) for v in re.findall(r"[-\d.]+", bracket.get("d", ""))]
        assert span[0] == pytest.approx(float(bars[0].get("x", "")))
        assert span[2] == pytest.approx(float(bars[99].get("x", "")) + float(bars[99].get("width", "")))
        assert [b.get("data-status") for b in bars[:100]] == ["vanishing"] * 100
        assert bars[0].get("fill", "").endswith("-vanishing-thin)")


def test_threshold_lines_are_drawn_over_the_bars_on_a_white_halo() -> None:
    """Over dark cross-hatched bars a dashed black line alone is lost: each threshold line comes
    after every bar (drawn above them) with a wider white line under it at the same place."""
    (flow,) = _charts(render([exploding_result()], OutputFormat.HTML), "flow")
    children = _panel_children(flow, "grad_to_weight")
    last_bar = max(i for i, e in enumerate(children) if "bar" in _classes(e))
    for i, line in enumerate(children):
        if "threshold" not in _classes(line):
            continue
        halo = children[i - 1]
        assert i > last_bar and "threshold-halo" in _classes(halo)
        assert [halo.get(k) for k in ("x1", "y1", "x2", "y2")] == [line.get(k) for k in ("x1", "y1", "x2", "y2")]
        assert halo.get("stroke") == "#ffffff" and float(halo.get("stroke-width", "")) > 2 * float(
            line.get("stroke-width", ""))


def test_a_nonfinite_value_is_a_full_height_dotted_placeholder_like_its_legend_swatch() -> None:
    nan = float("nan")
    layers = (_layer(0, "enc", nan, Status.NONFINITE), _layer(1, "head", 0.3), _layer(2, "frozen", None, Status.FROZEN))
    (flow,) = _charts(_page(_report(layers, verdict=Status.NONFINITE)), "flow")
    (swatch,) = [r for r in flow.iter("rect") if "swatch" in _classes(r) and r.get("data-status") == "nonfinite"]
    for metric in ("grad_norm", "grad_to_weight"):
        frame = _frame(flow, metric)
        boxes = [r for r in _panel_children(flow, metric) if "placeholder" in _classes(r)]
        assert [b.get("data-layer") for b in boxes] == ["enc"]  # not for "frozen": a missing value is not NaN
        (box,) = boxes
        assert (box.get("y"), box.get("height")) == (frame.get("y"), frame.get("height"))
        assert [box.get(k) for k in ("fill", "stroke", "stroke-dasharray")] == \
            [swatch.get(k) for k in ("fill", "stroke", "stroke-dasharray")]
        marks = {t.get("data-layer"): t for t in _panel_children(flow, metric) if "mark" in _classes(t)}
        assert marks["enc"].text == "NaN" and marks["frozen"].text == "— F"
        top, bottom = float(frame.get("y", "")), float(frame.get("y", "")) + float(frame.get("height", ""))
        assert top + 40 < float(marks["enc"].get("y", "")) < bottom - 40  # in the box, not at the baseline
        assert float(marks["frozen"].get("y", "")) > bottom - 10
    healthy = _charts(_page(_report((_layer(0, "a", 0.3), _layer(1, "b", 0.2)))), "flow")[0]
    assert [r.get("data-status") for r in healthy.iter("rect") if "swatch" in _classes(r)] == ["healthy"]


@pytest.mark.parametrize("count", [1, 2, 5])
def test_bars_are_at_most_48_px_wide_and_centred(count: int) -> None:
    (flow,) = _charts(_page(_report(tuple(_layer(i, f"l{i}", 0.1 * (i + 1)) for i in range(count)))), "flow")
    frame = _frame(flow, "grad_norm")
    left, right = float(frame.get("x", "")), float(frame.get("x", "")) + float(frame.get("width", ""))
    bars = _bars(flow, "grad_norm")
    assert all(float(b.get("width", "")) <= 48 for b in bars)
    first, last = float(bars[0].get("x", "")), float(bars[-1].get("x", "")) + float(bars[-1].get("width", ""))
    assert first - left == pytest.approx(right - last, abs=0.02)


def _y_tick_labels(chart: ET.Element) -> list[str]:
    return [t.text or "" for t in chart.iter("text") if "tick" in _classes(t) and t.get("text-anchor") == "end"]


def test_linear_tick_labels_are_distinct_with_the_decimals_of_their_step() -> None:
    """A loss between 5.541 and 5.552 has ticks 0.005 apart: three significant digits printed
    5.55 for both 5.545 and 5.550."""
    report = _watch_report()
    assert report.series is not None
    losses = tuple(5.541 + 0.0012 * k for k in range(len(report.series.steps)))
    (loss,) = _charts(_page(replace(report, series=replace(report.series, loss=losses))), "loss")
    labels = _y_tick_labels(loss)
    assert labels == ["5.540", "5.545", "5.550", "5.555"]


def test_through_time_x_axis_has_ticks_at_round_steps_under_their_points() -> None:
    profile = tuple(10.0 ** (-0.3 * k) for k in reversed(range(100)))
    rnn = _layer(0, "rnn", 0.4, Status.VANISHING, through_time=ThroughTime(profile, "last", 5))
    (chart,) = _charts(_page(_report((rnn,), verdict=Status.VANISHING)), "through-time")
    ticks = {t.text or "": float(t.get("x", "")) for t in chart.iter("text")
             if "tick" in _classes(t) and t.get("text-anchor") == "middle"}
    assert list(ticks) == ["0", "20", "40", "60", "80", "99"]
    xs = [float(c.get("cx", "")) for c in chart.iter("circle") if "point" in _classes(c)]
    for text, x in ticks.items():
        assert x == pytest.approx(xs[-1 - int(text)], abs=0.02)  # k steps back is the k-th point from the right


def test_a_status_glyph_never_sits_on_a_threshold_line() -> None:
    """A bar ending 0.4 decade under the exploding line would have its E on the line: it moves above."""
    layers = (_layer(0, "near", 2.0e3 * 10 ** -0.4, Status.EXPLODING), _layer(1, "head", 0.5))
    page = _page(_report(layers, verdict=Status.EXPLODING))
    line = float(_threshold_lines(page)["explode_grad_to_weight"].get("y1", ""))
    (flow,) = _charts(page, "flow")
    (glyph,) = [t for t in _panel_children(flow, "grad_to_weight") if "mark" in _classes(t)]
    (bar,) = [b for b in _bars(flow, "grad_to_weight") if b.get("data-layer") == "near"]
    assert line < float(bar.get("y", "")) < line + 12  # the bar's top is just under the line
    baseline = float(glyph.get("y", ""))
    assert not baseline - 9 <= line <= baseline + 2, (baseline, line)
    assert glyph.get("paint-order") == "stroke" and glyph.get("stroke") == "#ffffff"  # and on a white halo


def test_runs_of_a_status_close_together_share_one_mark_inside_the_panel() -> None:
    """Two vanishing layers in every nine (grouped 5 to a bar: a vanishing bar every other bar or
    so): one "V" mark spanning them all, with a tick over each run, not a stack of marks."""
    layers = tuple(_layer(i, f"layers.{i}", 10.0 ** (-9 + 8 * i / 1000), Status.VANISHING if i % 9 > 6
                          else Status.HEALTHY) for i in range(1000))
    (flow,) = _charts(_page(_report(layers, verdict=Status.VANISHING)), "flow")
    for metric in ("grad_norm", "grad_to_weight"):
        children = _panel_children(flow, metric)
        (run,) = [g for g in children if g.tag == "g" and g.get("class") == "mark-run"]
        vanishing_bars = [b for b in _bars(flow, metric) if b.get("data-status") == "vanishing"]
        assert run.get("data-bars") == str(len(vanishing_bars)) and int(run.get("data-runs", "")) > 20
        assert run.get("data-layers") == str(sum(int(b.get("data-count", "")) for b in vanishing_bars))
        (mark,) = [t for t in children if t.tag == "text" and "mark" in _classes(t)]
        assert _own_text(mark) == f"V ×{len(vanishing_bars)}"
        assert float(mark.get("y", "")) > float(_frame(flow, metric).get("y", "")) - 11  # not above the panel


def test_a_long_chart_title_is_cut_on_the_chart_and_whole_in_its_title_element() -> None:
    name = "encoder." + "very_long_module_name." * 12 + "gru"
    rnn = _layer(0, name, 0.4, Status.VANISHING, through_time=ThroughTime((1e-3, 1e-2, 1e-1), "last", None))
    (chart,) = _charts(_page(_report((rnn,), verdict=Status.VANISHING)), "through-time")
    title = chart.find("title")
    assert title is not None and title.text and name in title.text
    (drawn,) = [t.text or "" for t in chart.iter("text") if "chart-title" in _classes(t)]
    assert len(drawn) == 100 and drawn.endswith("…") and title.text.startswith(drawn[:-1])
