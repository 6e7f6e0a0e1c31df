"""The HTML page's charts on what third-party models produced (issue 15): defects seen on real
reports, each test failing on the page as it was before its fix.

- H3: the through-time caption speaks of a dashed horizon line only when one is drawn;
- H5: a long layer name in the step-norm legend is shortened (its end kept), whole in a tooltip;
- H6: end-of-line labels crowded at the lines' ends sit above and below them inside the plot,
  their leaders grey and dotted (not read as the lines falling at the last step); when they cannot
  all fit, none is drawn and the legend names the lines;
- a grouped flow chart explains its whisker (a group's min..max grad/weight) in its legend, and
  only a chart that draws one;
- the loss and step-norm lines carry their numbers (data-values for the chart's data-steps).
Reports are built in code; the charts are read back as XML.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import replace

import pytest

from gradcheck_cli.report.records import LayerReport, LossInfo, Report, ScanResult, Status, ThroughTime
from gradcheck_cli.report.render import OutputFormat, render
from gradcheck_cli.report.render.svg_axes import Axis
from gradcheck_cli.report.render.svg_series import LABEL_GAP
from gradcheck_cli.report.series import LayerSeries, WatchSeries

LONG = "encoder." + "very_long_recurrent_block_name_" * 6 + "rnn"  # 194 characters, no break point


def _layer(index: int, name: str, grad_norm: float | None, status: Status = Status.HEALTHY,
           through_time: ThroughTime | None = None) -> LayerReport:
    ratio = None if grad_norm is None else grad_norm / 2.0
    return LayerReport(name, "Linear", index, 100, status, grad_norm, 2.0, ratio, 0, through_time=through_time)


def _report(layers: tuple[LayerReport, ...], **changes: object) -> Report:
    report = Report("models/net.py", "0.1.0", {"batches": 3, "batch_size": 16, "seed": 0, "device": "cpu",
                                               "steps": 0, "fail_on": ["exploding", "nonfinite"]},
                    LossInfo("mse", (1.0, 0.9, 0.8)), Status.HEALTHY, layers, (), ())
    return replace(report, **changes)  # type: ignore[arg-type]


def _page(report: Report) -> str:
    return render([ScanResult(report.target, report.target, report)], OutputFormat.HTML)


def _charts(page: str, kind: str) -> list[ET.Element]:
    charts = [ET.fromstring(match) for match in re.findall(r"<svg\b.*?</svg>", page, flags=re.S)]
    return [c for c in charts if c.get("data-chart") == kind]


def _classes(element: ET.Element) -> list[str]:
    return (element.get("class") or "").split()


def _watch(names: list[str], norms: list[float]) -> Report:
    """A watch of 10 steps whose layers' norms stay at ``norms`` (one layer per name)."""
    steps = tuple(range(0, 100, 10))
    series = tuple(LayerSeries(name, (norm,) * len(steps), (None,) * len(steps), (None,) * len(steps))
                   for name, norm in zip(names, norms, strict=True))
    return _report(tuple(_layer(i, name, norm) for i, (name, norm) in enumerate(zip(names, norms, strict=True))),
                   config={"mode": "watch", "steps": 100, "optimizer": "SGD", "every": 10, "device": "cpu",
                           "fail_on": ["exploding"]},
                   series=WatchSeries(steps, tuple(2.0 - s / 100 for s in steps), series))


# --- H3: the through-time caption --------------------------------------------------------------


def _caption_of_profile(horizon: int | None) -> tuple[str, list[ET.Element]]:
    profile = ThroughTime(tuple(10.0 ** (-0.1 * k) for k in reversed(range(12))), "last", horizon)
    page = _page(_report((_layer(0, "rnn", 0.4, through_time=profile), _layer(1, "head", 0.5))))
    (chart,) = _charts(page, "through-time")
    (caption,) = re.findall(r'data-chart="through-time".*?<figcaption>(.*?)</figcaption>', page, flags=re.S)
    return caption, [line for line in chart.iter("line") if "horizon" in _classes(line)]


def test_the_through_time_caption_names_the_horizon_line_only_when_one_is_drawn() -> None:
    caption, lines = _caption_of_profile(None)
    assert lines == []
    assert "dashed" not in caption and "no horizon line" in caption and "all 12 steps" in caption
    caption, lines = _caption_of_profile(4)
    assert len(lines) == 1 and "the dashed line is the effective horizon, 4 steps back" in caption


# --- H5: the step-norm legend ------------------------------------------------------------------


def test_a_long_name_in_the_step_norm_legend_is_shortened_and_whole_in_its_tooltip() -> None:
    from gradcheck_cli.report.render.svg_series import MAX_LEGEND_NAME

    (norms,) = _charts(_page(_watch([LONG, "head"], [0.1, 0.5])), "step-norms")
    (legend,) = [g for g in norms.iter("g") if g.get("class") == "legend"]
    texts = [t.text or "" for t in legend.iter("text")]
    assert texts[1] == "head"
    assert len(texts[0]) == MAX_LEGEND_NAME and texts[0] == "…" + LONG[-(MAX_LEGEND_NAME - 1):]
    (entry,) = [g for g in legend.iter("g") if g.get("class") == "legend-entry"]
    assert entry.findtext("title") == LONG and (entry.find("text") is not None)
    # 11 px sans-serif is at most ~7 px a character: the legend text ends inside the 960-px chart.
    assert float(entry.find("text").get("x", "")) + 7 * len(texts[0]) <= float(norms.get("width", ""))  # type: ignore[union-attr]


# --- H6: end-of-line labels and their leaders -----------------------------------------------------


def _labels(chart: ET.Element) -> list[tuple[float, float, ET.Element | None]]:
    """Per line: its end's y, its label's y and its leader (None when the label is at its end)."""
    found = []
    for series in (g for g in chart.iter("g") if g.get("class") == "series"):
        (polyline,) = series.iter("polyline")
        end = float((polyline.get("points") or "").split()[-1].split(",")[1])
        (label,) = [t for t in series.iter("text") if "line-label" in _classes(t)]
        leaders = [line for line in series.iter("line") if "leader" in _classes(line)]
        found.append((end, float(label.get("y", "")), leaders[0] if leaders else None))
    return found


def test_crowded_end_labels_sit_around_their_lines_inside_the_plot_with_grey_dotted_leaders() -> None:
    """Seven layers ending at one norm low in the plot (as a 1,000-layer MLP's did), one far above:
    the seven labels are spread over and under their ends, every label box inside the plot's
    height, and each leader is thin, grey and dotted, not a solid stroke in the line's colour."""
    norms_at = [0.03 * (1 + i / 1000) for i in range(7)] + [10.0]
    (norms,) = _charts(_page(_watch([f"{i}.fc" for i in range(8)], norms_at)), "step-norms")
    (frame,) = [r for r in norms.iter("rect") if "frame" in _classes(r)]
    top = float(frame.get("y", ""))
    bottom = top + float(frame.get("height", ""))
    every = _labels(norms)
    assert all(top + 5 <= at <= bottom - 5 for _, at, _ in every), (top, bottom, every)
    labels = [label for label in every if label[0] > (top + bottom) / 2]  # the crowd, not the high one
    assert len(labels) == 7
    ends = [end for end, _, _ in labels]
    assert max(ends) - min(ends) < 1 and min(ends) > (top + bottom) / 2
    ats = sorted(at for _, at, _ in labels)
    assert min(b - a for a, b in zip(ats, ats[1:])) >= LABEL_GAP - 0.01
    middle = sum(ends) / len(ends)
    assert ats[0] < middle < ats[-1], "the labels all hang on one side of the lines' ends"
    assert abs(sum(ats) / len(ats) - middle) <= LABEL_GAP / 2
    leaders = [leader for _, _, leader in labels if leader is not None]
    assert len(leaders) >= 6
    for leader in leaders:
        assert leader.get("stroke") == "#8c8c8c" and leader.get("stroke-dasharray")
        assert float(leader.get("stroke-width", "")) < 1


def test_end_labels_that_cannot_all_fit_in_the_plot_are_left_to_the_legend() -> None:
    from gradcheck_cli.report.render.svg_series import _label_positions

    axis = Axis(0.0, 1.0, 40.0, 260.0)
    fits = (220 - LABEL_GAP) // LABEL_GAP + 1  # label centres from 46.5 to 253.5, LABEL_GAP apart
    placed = _label_positions([150.0] * int(fits), axis)
    assert len(placed) == fits and min(placed) >= 40 + LABEL_GAP / 2 and max(placed) <= 260 - LABEL_GAP / 2
    assert _label_positions([150.0] * int(fits + 1), axis) == []
    assert _label_positions([255.0, 258.0], axis) == pytest.approx([240.5, 253.5])  # kept inside, not below


# --- the flow chart's group whisker in its legend ---------------------------------------------


@pytest.mark.parametrize("count", [12, 600])
def test_the_group_whisker_is_in_the_legend_only_when_grouped_bars_draw_one(count: int) -> None:
    layers = tuple(_layer(i, f"blocks.{i}", 10.0 ** (-(i % 7))) for i in range(count))
    (flow,) = _charts(_page(_report(layers)), "flow")
    whiskers = [line for line in flow.iter("line") if "range" in _classes(line)]
    entries = [g for g in flow.iter("g") if "range-legend" in _classes(g)]
    if count == 12:
        assert whiskers == [] and entries == []
        return
    assert whiskers and len(entries) == 1
    assert "lowest to highest grad/weight" in "".join(entries[0].itertext())
    (legend_line,) = entries[0].iter("line")
    y = float(legend_line.get("y2", ""))
    assert y <= float(flow.get("height", "")) - 4  # inside the chart, under the statuses' row
    (statuses,) = [g for g in flow.iter("g") if g.get("class") == "legend"]
    assert all(float(t.get("y", "")) < y - 10 for t in statuses.iter("text"))


# --- the numbers of the charts over steps, read back ----------------------------------------------


def test_step_chart_lines_carry_the_reports_numbers_and_stay_small_at_512_steps() -> None:
    """Each line of the loss and step-norm charts carries its values (``repr``, "none" where the
    report has none) for the chart's data-steps; 512 steps of 8 lines and the band stay < 200 KB."""
    steps = tuple(range(0, 5120, 10))
    names = [f"blocks.{i}.fc" for i in range(30)]
    norms: list[tuple[float | None, ...]] = [tuple(0.01 * (i + 1) * (1.1 + math.sin(s / 77 + i)) for s in steps)
                                             for i in range(30)]
    norms[3] = (None, *norms[3][1:])
    series = tuple(LayerSeries(name, values, (None,) * len(steps), (None,) * len(steps))
                   for name, values in zip(names, norms, strict=True))
    loss = tuple(2.0 / (1 + s / 1000) for s in steps[:-1]) + (math.nan,)
    report = replace(_watch(names, [0.1] * 30), series=WatchSeries(steps, loss, series))
    page = _page(report)
    for kind in ("loss", "step-norms"):
        (chart,) = _charts(page, kind)
        assert chart.get("data-steps") == " ".join(map(str, steps)), kind
        lines = [g for g in chart.iter("g") if g.get("class") == "series"]
        assert lines, kind
        for line in lines:
            values = (line.get("data-values") or "").split(" ")
            expected = loss if kind == "loss" else norms[names.index(line.get("data-label") or "")]
            assert values == ["none" if v is None else repr(v) for v in expected], (kind, line.get("data-label"))
    (chart,) = _charts(page, "step-norms")
    (gappy,) = [g for g in chart.iter("g") if g.get("data-label") == "blocks.3.fc"]
    assert (gappy.get("data-values") or "").startswith("none ")  # drawn, its missing first value named
    (norms_svg,) = re.findall(r'<svg[^>]*data-chart="step-norms".*?</svg>', page, flags=re.S)
    assert len(norms_svg.encode()) < 200_000


def test_a_point_without_neighbours_is_drawn_as_a_dot() -> None:
    """A watch of one step (seen on a real one-step watch: its charts showed only the labels), and a
    value between two missing ones: a polyline of one point draws nothing, so each gets a dot."""
    series = (LayerSeries("net.0", (0.5,), (None,), (None,)), LayerSeries("net.2", (0.25,), (None,), (None,)))
    one_step = replace(_watch(["net.0", "net.2"], [0.5, 0.25]), series=WatchSeries((0,), (0.03,), series))
    for kind in ("loss", "step-norms"):
        (chart,) = _charts(_page(one_step), kind)
        for line in (g for g in chart.iter("g") if g.get("class") == "series"):
            (polyline,) = line.iter("polyline")
            (dot,) = [c for c in line.iter("circle") if "lone" in _classes(c)]
            x, y = (polyline.get("points") or "").split(",")
            assert (dot.get("cx"), dot.get("cy")) == (x, y) and float(dot.get("r", "")) >= 2, kind
    steps = (0, 10, 20, 30)
    gappy = (LayerSeries("net.0", (0.5, None, 0.4, None), (None,) * 4, (None,) * 4),
             LayerSeries("net.2", (0.3, 0.2, 0.1, 0.1), (None,) * 4, (None,) * 4))
    report = replace(_watch(["net.0", "net.2"], [0.5, 0.25]), series=WatchSeries(steps, (1.0,) * 4, gappy))
    (chart,) = _charts(_page(report), "step-norms")
    dots = {g.get("data-label"): len([c for c in g.iter("circle") if "lone" in _classes(c)])
            for g in chart.iter("g") if g.get("class") == "series"}
    assert dots == {"net.0": 2, "net.2": 0}  # 0.5 and 0.4 stand alone; a whole line has no dots
