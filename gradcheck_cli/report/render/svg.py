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
never a made-up bar. Status is never colour alone: a glyph above the bar (STATUS_MARKS), a fill
pattern per status that reads in greyscale, and a legend.

Every chart is well-formed XML (self-closed empty elements, escaped text), so a test can parse it
with xml.etree; ids are prefixed with the caller's ``ident`` so several charts share one page.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from gradcheck_cli.report.charts import Bar, FlowChart, log10
from gradcheck_cli.report.records import Status
from gradcheck_cli.report.render.common import format_number

WIDTH = 960
"""Every chart's width in px (the page scales it down on a narrow screen, never up)."""
LEFT, RIGHT = 80, 190
"""Margins around a plot area: tick labels and axis title left, threshold and line labels right."""
PLOT_WIDTH = WIDTH - LEFT - RIGHT
PANEL_HEIGHT = 190
MAX_NAME = 22
"""Characters of a layer name under a bar: longer names keep their end ("…layers.11.mlp.fc2"), the part
that tells siblings apart; the full name is in the bar's tooltip and the layer table."""
MAX_NAMED_BARS = 40
"""Up to this many bars each get their layer name under them; more get a position every few bars."""

STATUS_MARKS = {Status.VANISHING: "V", Status.EXPLODING: "E", Status.NONFINITE: "NaN",
                Status.FROZEN: "F", Status.UNUSED: "U"}
"""The glyph above a non-healthy bar: status in text, not in colour alone."""

STATUS_STYLE = {
    # status: (background, line colour, pattern: "" solid | "hatch" | "cross" | "dots")
    Status.HEALTHY: ("#5b8db8", "#5b8db8", ""),
    Status.VANISHING: ("#c6dbef", "#08306b", "hatch"),
    Status.EXPLODING: ("#e6550d", "#3d0b00", "cross"),
    Status.NONFINITE: ("#3f007d", "#ffffff", "dots"),
    Status.FROZEN: ("#ffffff", "#636363", ""),
    Status.UNUSED: ("#ffffff", "#636363", ""),
}
"""Fill per status: light hatched (vanishing), dark cross-hatched (exploding), black with dots
(non-finite), white outlined (frozen, unused): distinct in greyscale too."""

FONT = 'font-family="sans-serif" font-size="11"'


@dataclass(frozen=True)
class Axis:
    """A value axis mapped onto pixels: ``low`` at ``bottom``, ``high`` at ``top``."""

    low: float
    high: float
    top: float
    bottom: float

    def y(self, value: float) -> float:
        return self.bottom - (value - self.low) / (self.high - self.low) * (self.bottom - self.top)


def num(value: float) -> str:
    """A coordinate: two decimals, no "-0.00", the same bytes on every platform."""
    text = f"{value:.2f}"
    return "0.00" if text == "-0.00" else text


def attr(text: object) -> str:
    """Text safe inside a double-quoted attribute or element content."""
    return escape(str(text), quote=True)


def data_value(value: float | None) -> str:
    """The report's number as data-value: ``repr`` of the float ("nan", "inf" included), "" for None."""
    return "" if value is None else repr(float(value))


def missing_word(value: float | None) -> str:
    """What a value a log axis cannot place is called on the chart."""
    if value is None:
        return "—"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Inf" if value > 0 else "-Inf"
    return format_number(value)  # zero or negative


def shorten(text: str, limit: int = MAX_NAME) -> str:
    return text if len(text) <= limit else "…" + text[len(text) - limit + 1:]


def open_svg(kind: str, ident: str, height: int, title: str, desc: str, extra: str = "") -> list[str]:
    """The opening of a chart: the <svg> element with its title and description."""
    return [f'<svg class="chart" data-chart="{kind}"{extra} role="img" aria-labelledby="{ident}-title" '
            f'aria-describedby="{ident}-desc" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" {FONT}>',
            f'<title id="{ident}-title">{attr(title)}</title>',
            f'<desc id="{ident}-desc">{attr(desc)}</desc>',
            f'<rect class="background" x="0" y="0" width="{WIDTH}" height="{height}" fill="#ffffff"/>',
            f'<text class="chart-title" x="{LEFT}" y="18" font-size="14" font-weight="bold">{attr(title)}</text>']


def log_axis(values: Sequence[float | None], extra: Sequence[float], top: float, bottom: float) -> Axis:
    """A log10 axis over the placeable values: whole decades, the floor at least half a decade
    below the smallest value (so the smallest bar still has a height) and room above the largest."""
    logs = [v for v in (log10(x) for x in values) if v is not None] + list(extra)
    if not logs:
        return Axis(-1.0, 1.0, top, bottom)
    return Axis(float(math.floor(min(logs) - 0.5)), float(math.ceil(max(logs) + 0.3)), top, bottom)


def decade_ticks(axis: Axis) -> list[int]:
    step = max(1, math.ceil((axis.high - axis.low) / 8))
    # Multiples of the step (-40, -35, ... rather than -38, -33, ...): round numbers read faster.
    return list(range(math.ceil(axis.low / step) * step, math.floor(axis.high) + 1, step))


def y_grid(axis: Axis, ticks: Sequence[float], labels: Sequence[str], title: str) -> list[str]:
    """Horizontal grid lines with their tick labels, the frame and the rotated axis title."""
    parts = []
    for tick, label in zip(ticks, labels, strict=True):
        y = num(axis.y(tick))
        parts.append(f'<line class="grid" x1="{LEFT}" y1="{y}" x2="{LEFT + PLOT_WIDTH}" y2="{y}" '
                     f'stroke="#e0e0e0"/>')
        parts.append(f'<text class="tick" x="{LEFT - 6}" y="{y}" text-anchor="end" '
                     f'dominant-baseline="middle">{attr(label)}</text>')
    middle = num((axis.top + axis.bottom) / 2)
    parts.append(f'<rect class="frame" x="{LEFT}" y="{num(axis.top)}" width="{PLOT_WIDTH}" '
                 f'height="{num(axis.bottom - axis.top)}" fill="none" stroke="#999999"/>')
    parts.append(f'<text class="axis-label" x="22" y="{middle}" text-anchor="middle" '
                 f'transform="rotate(-90 22 {middle})">{attr(title)}</text>')
    return parts


def pattern_defs(ident: str) -> list[str]:
    """One fill pattern per patterned status, ids prefixed with the chart's ident."""
    shapes = {"hatch": '<path d="M0,6 L6,0" stroke="{line}" stroke-width="1.6"/>',
              "cross": '<path d="M0,6 L6,0 M0,0 L6,6" stroke="{line}" stroke-width="1.3"/>',
              "dots": '<circle cx="3" cy="3" r="1.2" fill="{line}"/>'}
    parts = ["<defs>"]
    for status, (background, line, pattern) in STATUS_STYLE.items():
        if not pattern:
            continue
        parts.append(f'<pattern id="{ident}-{status.value}" width="6" height="6" patternUnits="userSpaceOnUse">'
                     f'<rect width="6" height="6" fill="{background}"/>'
                     f'{shapes[pattern].format(line=line)}</pattern>')
    parts.append("</defs>")
    return parts


def fill_of(status: Status, ident: str, thin: bool = False) -> str:
    """fill/stroke attributes of a bar or legend swatch of this status; a ``thin`` bar (a few px
    wide: a grouped chart) gets a hairline outline, else the outline would hide its pattern."""
    background, line, pattern = STATUS_STYLE.get(status, STATUS_STYLE[Status.HEALTHY])
    fill = f"url(#{ident}-{status.value})" if pattern else background
    if status in (Status.FROZEN, Status.UNUSED):
        return f'fill="{fill}" stroke="{line}" stroke-dasharray="3 2"'
    if status is Status.HEALTHY:
        return f'fill="{fill}"'
    return f'fill="{fill}" stroke="#000000" stroke-width="{0.4 if thin else 1}"'


def flow_svg(chart: FlowChart, ident: str) -> str:
    """The flow chart: log10 gradient norm (top panel) and log10 grad/weight (bottom panel) per
    layer along depth, with the vanishing and exploding thresholds drawn in the bottom panel."""
    bars = chart.bars
    named = len(bars) <= MAX_NAMED_BARS
    top_panel = Axis(0, 1, 44, 44 + PANEL_HEIGHT)
    low_panel = Axis(0, 1, top_panel.bottom + 36, top_panel.bottom + 36 + PANEL_HEIGHT)
    longest = max(len(shorten(b.label)) for b in bars) if named else 0
    label_room = 30 + math.ceil(5 * longest) if named else 40  # names at 60 degrees, ~5.8 px a character
    height = int(low_panel.bottom + label_room + 40)
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
    parts += _legend(sorted({b.status for b in bars} | {Status.HEALTHY}, key=list(Status).index),
                     ident, height - 14)
    parts.append("</svg>")
    return "\n".join(parts)


def _panel(metric: str, label: str, axis: Axis, bars: Sequence[Bar], ident: str,
           thresholds: Sequence[tuple[str, float, str]] = ()) -> list[str]:
    ticks = decade_ticks(axis)
    parts = [f'<g class="panel" data-metric="{metric}">']
    parts += y_grid(axis, ticks, [str(t) for t in ticks], label)
    slot = PLOT_WIDTH / len(bars)
    gap = min(2.0, slot * 0.2)
    for i, bar in enumerate(bars):
        parts += _bar(bar, getattr(bar, metric), axis, LEFT + i * slot + gap / 2, slot - gap, ident,
                      metric == "grad_to_weight")
    for name, value, words in thresholds:
        position = log10(value)
        if position is None:
            continue
        y = num(axis.y(position))
        parts.append(f'<line class="threshold" data-threshold="{name}" data-value="{data_value(value)}" '
                     f'x1="{LEFT}" y1="{y}" x2="{LEFT + PLOT_WIDTH}" y2="{y}" stroke="#000000" '
                     f'stroke-width="1.5" stroke-dasharray="6 3"/>')
        parts.append(f'<text class="threshold-label" x="{LEFT + PLOT_WIDTH + 6}" y="{y}" '
                     f'dominant-baseline="middle">{attr(words)} {attr(format_number(value))}</text>')
    parts.append("</g>")
    return parts


def _bar(bar: Bar, value: float | None, axis: Axis, x: float, width: float, ident: str,
         with_range: bool) -> list[str]:
    """One bar (or a placeholder with its text mark), its status glyph and, for a group, the
    range of grad/weight in the group."""
    position = log10(value)
    top = axis.bottom if position is None else axis.y(position)
    classes = f"bar status-{bar.status.value}" + (" missing" if position is None else "")
    tooltip = (f"{bar.label}: {format_number(value)} ({bar.status.value}"
               + (f", {bar.count} layers, median shown" if bar.count > 1 else "") + ")")
    parts = [f'<rect class="{classes}" data-layer="{attr(bar.label)}" data-status="{bar.status.value}" '
             f'data-count="{bar.count}" data-value="{data_value(value)}" x="{num(x)}" y="{num(top)}" '
             f'width="{num(width)}" height="{num(axis.bottom - top)}" {fill_of(bar.status, ident, width < 6)}>'
             f'<title>{attr(tooltip)}</title></rect>']
    if with_range and bar.low is not None and bar.high is not None:
        low, high = log10(bar.low), log10(bar.high)
        if low is not None and high is not None:
            middle = num(x + width / 2)
            parts.append(f'<line class="range" data-layer="{attr(bar.label)}" data-low="{data_value(bar.low)}" '
                         f'data-high="{data_value(bar.high)}" x1="{middle}" y1="{num(axis.y(low))}" x2="{middle}" '
                         f'y2="{num(axis.y(high))}" stroke="#000000"/>')
    marks = [missing_word(value)] if position is None else []
    if bar.status in STATUS_MARKS and STATUS_MARKS[bar.status] not in marks:
        marks.append(STATUS_MARKS[bar.status])
    if marks:
        kind = "missing" if position is None else "status"
        parts.append(f'<text class="mark {kind}" data-layer="{attr(bar.label)}" x="{num(x + width / 2)}" '
                     f'y="{num(top - 3)}" text-anchor="middle" font-size="{11 if position is None else 9}" '
                     f'font-weight="bold">'
                     f'{attr(" ".join(marks))}</text>')
    return parts


def _x_labels(bars: Sequence[Bar], bottom: float, named: bool, room: int) -> list[str]:
    """Layer names under the bars (rotated), or positions every few bars for a long model."""
    slot = PLOT_WIDTH / len(bars)
    parts = ['<g class="x-labels">']
    every = 1 if named else max(1, math.ceil(len(bars) / 10))
    for i in range(0, len(bars), every):
        x = num(LEFT + (i + 0.5) * slot)
        text = shorten(bars[i].label) if named else str(bars[i].first)
        parts.append(f'<text class="tick" x="{x}" y="{num(bottom + 12)}" text-anchor="end" '
                     f'transform="rotate(-60 {x} {num(bottom + 12)})">{attr(text)}</text>')
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
