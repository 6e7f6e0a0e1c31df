"""Inline SVG drawings of the charts of a report (report/charts.py), for the HTML page: pure
string building, no state, no script, no external reference.

The SVG contract (docs in README "HTML report"; read back by tests/test_html_report.py and the
browser test): every chart is ``<svg class="chart" data-chart="KIND" role="img"
aria-labelledby="ID">`` with ``<title id="ID">`` and a ``<desc>``, KIND one of flow |
through-time | loss | step-norms, at most WIDTH x ~700 px whatever the model's size. The flow chart
has two panels (``<g class="panel" data-metric="grad_norm|grad_to_weight">``), each with exactly one
``<rect class="bar ...">`` per charts.Bar carrying data-layer, data-status, data-count and
data-value (``repr`` of the report's float, "" when None); the bar's height is the log10 of that
value above the panel's floor, so the drawing carries the number, not only the attribute. A
missing, zero or non-finite value gets a zero-height bar and a text mark ("NaN", "Inf", "0", "—"),
never a made-up bar; a NaN or Inf value also gets a full-height dotted placeholder box
(``<rect class="placeholder nonfinite">``, like the legend's non-finite swatch) with its word in
the middle, so the panel shows where the number is missing. Status is never colour alone: a glyph
above the bar or one mark per run of thin bars (svg_marks.py), a fill pattern per status that
reads in greyscale, and a legend. Bars are at most MAX_BAR px wide, centred; the threshold lines
are drawn over the bars on a white halo, the marks over everything.

Every chart is well-formed XML (self-closed empty elements, escaped text), so a test can parse it
with xml.etree; ids are prefixed with the caller's ``ident`` so several charts share one page.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gradcheck_cli.report.charts import Bar, FlowChart, log10, nonfinite
from gradcheck_cli.report.records import Status
from gradcheck_cli.report.render.common import format_number
from gradcheck_cli.report.render.svg_axes import (
    LEFT,
    PLOT_WIDTH,
    Axis,
    attr,
    data_value,
    decade_ticks,
    log_axis,
    num,
    open_svg,
    shorten,
    y_grid,
)
from gradcheck_cli.report.render.svg_marks import STATUS_MARKS, Mark, marks_svg

PANEL_HEIGHT = 190
MAX_NAMED_BARS = 40
"""Up to this many bars each get their layer name under them; more get a position every few bars."""
LEGEND_ROW = 18
"""px of a second legend row (the group whisker's entry, under the statuses)."""
MAX_BAR, MAX_SLOT = 48, 64
"""The widest bar and the widest slot (bar and gap) in px: a 2-layer model draws two bars of this
width centred in the plot, not two 340-px slabs."""
THIN = 6
"""Bars narrower than this (px) get a lighter pattern and no outline: the usual pattern and outline
on a 3-px bar would read as a black stripe."""

STATUS_STYLE = {
    # status: (background, line colour, pattern: "" solid | "hatch" | "cross" | "dots")
    Status.HEALTHY: ("#5b8db8", "#5b8db8", ""),
    Status.VANISHING: ("#c6dbef", "#08306b", "hatch"),
    Status.EXPLODING: ("#e6550d", "#3d0b00", "cross"),
    Status.NONFINITE: ("#f2f0f7", "#3f007d", "dots"),
    Status.FROZEN: ("#ffffff", "#636363", ""),
    Status.UNUSED: ("#ffffff", "#636363", ""),
}
"""Fill per status: light hatched (vanishing), dark cross-hatched (exploding), a dotted box with
dark dots (non-finite: the same as the placeholder drawn for a NaN or Inf value), white outlined
(frozen, unused): distinct in greyscale too."""


def pattern_defs(ident: str) -> list[str]:
    """Two fill patterns per patterned status, ids prefixed with the chart's ident: the usual one
    and a lighter one for thin bars (``-thin``: finer lines, so a 3-px bar keeps its tone)."""
    shapes = {"hatch": '<path d="M0,6 L6,0" stroke="{line}" stroke-width="{w}"/>',
              "cross": '<path d="M0,6 L6,0 M0,0 L6,6" stroke="{line}" stroke-width="{w}"/>',
              "dots": '<circle cx="3" cy="3" r="{r}" fill="{line}"/>'}
    parts = ["<defs>"]
    for status, (background, line, pattern) in STATUS_STYLE.items():
        if not pattern:
            continue
        # Thin: finer hatching (light vanishing bars stay light); the cross keeps enough ink that an
        # orange exploding bar, as grey as a healthy one in greyscale, still reads darker than it.
        for suffix, width, radius in (("", 1.6 if pattern == "hatch" else 1.3, 1.2),
                                      ("-thin", 0.7 if pattern == "hatch" else 1.0, 0.8)):
            parts.append(f'<pattern id="{ident}-{status.value}{suffix}" width="6" height="6" '
                         f'patternUnits="userSpaceOnUse"><rect width="6" height="6" fill="{background}"/>'
                         f'{shapes[pattern].format(line=line, w=width, r=radius)}</pattern>')
    parts.append("</defs>")
    return parts


def fill_of(status: Status, ident: str, thin: bool = False) -> str:
    """fill/stroke attributes of a bar or legend swatch of this status; a ``thin`` bar (a few px
    wide: a grouped chart) gets the lighter pattern and no outline, else the outline and the
    pattern's lines would cover it (the pattern still tells it from a healthy bar)."""
    background, line, pattern = STATUS_STYLE.get(status, STATUS_STYLE[Status.HEALTHY])
    fill = f"url(#{ident}-{status.value}{'-thin' if thin else ''})" if pattern else background
    if status in (Status.FROZEN, Status.UNUSED):
        return f'fill="{fill}" stroke="{line}" stroke-dasharray="3 2"'
    if status is Status.HEALTHY:
        return f'fill="{fill}"'
    if status is Status.NONFINITE:
        return f'fill="{fill}" stroke="{line}" stroke-width="{0.6 if thin else 1.2}" stroke-dasharray="2 2"'
    return f'fill="{fill}"' if thin else f'fill="{fill}" stroke="#000000" stroke-width="1"'


def bar_slots(count: int) -> tuple[float, float]:
    """Where the first of ``count`` bar slots starts and how wide each is: at most MAX_SLOT, the
    bars centred in the plot area."""
    slot = min(PLOT_WIDTH / count, MAX_SLOT)
    return LEFT + (PLOT_WIDTH - slot * count) / 2, slot


def flow_svg(chart: FlowChart, ident: str) -> str:
    """The flow chart: log10 gradient norm (top panel) and log10 grad/weight (bottom panel) per
    layer along depth, with the vanishing and exploding thresholds drawn in the bottom panel."""
    bars = chart.bars
    named = len(bars) <= MAX_NAMED_BARS
    top_panel = Axis(0, 1, 44, 44 + PANEL_HEIGHT)
    low_panel = Axis(0, 1, top_panel.bottom + 36, top_panel.bottom + 36 + PANEL_HEIGHT)
    longest = max(len(shorten(b.label)) for b in bars) if named else 0
    # Names at 60 degrees, ~6 px a character: 5.2 px of height each, plus the caption's line under
    # them (the bars are centred, so a short model's names sit right above the centred caption).
    label_room = 36 + math.ceil(5.5 * longest) if named else 44
    ranges = any(_has_range(b) for b in bars)
    height = int(low_panel.bottom + label_room + 40) + (LEGEND_ROW if ranges else 0)
    limits = chart.thresholds
    desc = (f"{chart.layers} layers with parameters in execution order, {len(bars)} bars; top: log10 of each "
            f"layer's gradient L2 norm; bottom: log10 of grad/weight with the vanishing threshold "
            f"{format_number(limits.vanish_grad_to_weight)} and the exploding threshold "
            f"{format_number(limits.explode_grad_to_weight)}. Marks: "
            + ", ".join(f"{mark} {status.value}" for status, mark in STATUS_MARKS.items()) + ".")
    parts = open_svg("flow", ident, height, chart.title, desc)
    parts += pattern_defs(ident)
    thresholds = (("vanish_grad_to_weight", limits.vanish_grad_to_weight, "vanishing below"),
                  ("explode_grad_to_weight", limits.explode_grad_to_weight, "exploding above"))
    norm_axis = log_axis([b.grad_norm for b in bars], [], top_panel.top, top_panel.bottom)
    ratio_axis = log_axis([b.grad_to_weight for b in bars] + [b.low for b in bars] + [b.high for b in bars],
                          [math.log10(t[1]) for t in thresholds if t[1] > 0], low_panel.top, low_panel.bottom)
    parts += _panel("grad_norm", "log10 gradient L2 norm", norm_axis, bars, ident)
    parts += _panel("grad_to_weight", "log10 grad/weight", ratio_axis, bars, ident, thresholds)
    parts += _x_labels(bars, low_panel.bottom, named, label_room)
    used = {b.status for b in bars} | {Status.HEALTHY}
    if any(nonfinite(b.grad_norm) or nonfinite(b.grad_to_weight) for b in bars):
        used.add(Status.NONFINITE)  # the placeholder of a NaN or Inf value looks like its swatch
    legend_y = height - 14 - (LEGEND_ROW if ranges else 0)
    parts += _legend(sorted(used, key=list(Status).index), ident, legend_y)
    if ranges:  # a grouped bar's whisker, explained only where one is drawn
        parts += _range_legend(legend_y + LEGEND_ROW)
    parts.append("</svg>")
    return "\n".join(parts)


def _panel(metric: str, label: str, axis: Axis, bars: Sequence[Bar], ident: str,
           thresholds: Sequence[tuple[str, float, str]] = ()) -> list[str]:
    """One panel: grid, bars, then the threshold lines above the bars, then the marks above all."""
    ticks = decade_ticks(axis)
    parts = [f'<g class="panel" data-metric="{metric}">']
    parts += y_grid(axis, ticks, [str(t) for t in ticks], label)
    start, slot = bar_slots(len(bars))
    width = min(slot - min(2.0, slot * 0.2), MAX_BAR)
    marks: list[Mark] = []
    for i, bar in enumerate(bars):
        drawn, mark = _bar(i, bar, getattr(bar, metric), axis, start + i * slot + (slot - width) / 2, width,
                           ident, metric == "grad_to_weight")
        parts += drawn
        marks += [mark] if mark else []
    lines = []
    for name, value, words in thresholds:
        position = log10(value)
        if position is None:
            continue
        lines.append(axis.y(position))
        y = num(lines[-1])
        ends = f'x1="{LEFT}" y1="{y}" x2="{LEFT + PLOT_WIDTH}" y2="{y}"'
        parts.append(f'<line class="threshold-halo" {ends} stroke="#ffffff" stroke-width="5"/>')
        parts.append(f'<line class="threshold" data-threshold="{name}" data-value="{data_value(value)}" '
                     f'{ends} stroke="#000000" stroke-width="1.5" stroke-dasharray="6 3"/>')
        parts.append(f'<text class="threshold-label" x="{LEFT + PLOT_WIDTH + 6}" y="{y}" '
                     f'dominant-baseline="middle">{attr(words)} {attr(format_number(value))}</text>')
    parts += marks_svg(marks, slot, lines)
    parts.append("</g>")
    return parts


def _bar(index: int, bar: Bar, value: float | None, axis: Axis, x: float, width: float, ident: str,
         with_range: bool) -> tuple[list[str], Mark | None]:
    """One bar (zero height when its value cannot be placed on the log axis; a full-height dotted
    placeholder behind it when the value is NaN or Inf), for a group the range of its grad/weight,
    and what its text mark says."""
    position = log10(value)
    top = axis.bottom if position is None else axis.y(position)
    classes = f"bar status-{bar.status.value}" + (" missing" if position is None else "")
    tooltip = (f"{bar.label}: {format_number(value)} ({bar.status.value}"
               + (f", {bar.count} layers, median shown" if bar.count > 1 else "") + ")")
    parts, mark_top = [], top
    if nonfinite(value):
        parts.append(f'<rect class="placeholder nonfinite" data-layer="{attr(bar.label)}" x="{num(x)}" '
                     f'y="{num(axis.top)}" width="{num(width)}" height="{num(axis.bottom - axis.top)}" '
                     f'{fill_of(Status.NONFINITE, ident, width < THIN)}/>')
        mark_top = (axis.top + axis.bottom) / 2 + 7  # its word in the middle of the box
    parts.append(f'<rect class="{classes}" data-layer="{attr(bar.label)}" data-status="{bar.status.value}" '
                 f'data-count="{bar.count}" data-value="{data_value(value)}" x="{num(x)}" y="{num(top)}" '
                 f'width="{num(width)}" height="{num(axis.bottom - top)}" '
                 f'{fill_of(bar.status, ident, width < THIN)}><title>{attr(tooltip)}</title></rect>')
    if with_range and _has_range(bar):
        low, high = log10(bar.low), log10(bar.high)
        if low is not None and high is not None:  # always (_has_range): for mypy
            middle = num(x + width / 2)
            parts.append(f'<line class="range" data-layer="{attr(bar.label)}" data-low="{data_value(bar.low)}" '
                         f'data-high="{data_value(bar.high)}" x1="{middle}" y1="{num(axis.y(low))}" x2="{middle}" '
                         f'y2="{num(axis.y(high))}" stroke="#000000"/>')
    words = [format_number(value)] if position is None else []
    if bar.status in STATUS_MARKS and STATUS_MARKS[bar.status] not in words:
        words.append(STATUS_MARKS[bar.status])
    if not words:
        return parts, None
    return parts, Mark(index, bar.label, bar.count, x, x + width, mark_top, " ".join(words),
                       "missing" if position is None else "status")


def _has_range(bar: Bar) -> bool:
    """Whether the bar gets the whisker of its group's min..max grad/weight (both ends placeable)."""
    return log10(bar.low) is not None and log10(bar.high) is not None


def _range_legend(y: float) -> list[str]:
    return ['<g class="legend range-legend">',
            f'<line x1="{LEFT + 7}" y1="{num(y - 12)}" x2="{LEFT + 7}" y2="{num(y + 2)}" stroke="#000000"/>',
            f'<text x="{LEFT + 18}" y="{num(y)}">black whisker: lowest to highest grad/weight of the layers in a '
            'grouped bar (the bar is their median layer)</text>', "</g>"]


def _x_labels(bars: Sequence[Bar], bottom: float, named: bool, room: int) -> list[str]:
    """Layer names under the bars (rotated), or upright positions every few bars for a long model."""
    start, slot = bar_slots(len(bars))
    parts = ['<g class="x-labels">']
    every = 1 if named else max(1, math.ceil(len(bars) / 10))
    for i in range(0, len(bars), every):
        x = num(start + (i + 0.5) * slot)
        if named:
            parts.append(f'<text class="tick" x="{x}" y="{num(bottom + 12)}" text-anchor="end" '
                         f'transform="rotate(-60 {x} {num(bottom + 12)})">{attr(shorten(bars[i].label))}</text>')
        else:  # short numbers: upright, one row, so the caption below never touches them
            parts.append(f'<text class="tick" x="{x}" y="{num(bottom + 15)}" text-anchor="middle">'
                         f'{bars[i].first}</text>')
    caption = "layers in execution order (first → last)" if named else "layer position in execution order"
    parts.append(f'<text class="axis-label" x="{num(LEFT + PLOT_WIDTH / 2)}" '
                 f'y="{num(bottom + room - 6)}" text-anchor="middle">{caption}</text>')
    parts.append("</g>")
    return parts


def _legend(statuses: Sequence[Status], ident: str, y: float) -> list[str]:
    parts = ['<g class="legend">']
    x = float(LEFT)
    for status in statuses:
        mark = STATUS_MARKS.get(status, "")
        parts.append(f'<rect class="swatch" data-status="{status.value}" x="{num(x)}" y="{num(y - 10)}" '
                     f'width="14" height="12" {fill_of(status, ident)}/>')
        words = f"{mark} = {status.value}" if mark else status.value
        parts.append(f'<text x="{num(x + 18)}" y="{num(y)}">{attr(words)}</text>')
        x += 40 + 7 * len(words)
    parts.append("</g>")
    return parts
