"""Inline SVG of the charts over time (report/charts.py): a recurrent layer's gradient through
time, and a watch's (or a scan with --steps) loss and per-layer gradient norms over steps.

Same contract and primitives as svg.py (the flow chart): one ``<svg class="chart">`` each, with
``<title>``/``<desc>``, well-formed XML, values a log axis cannot place written as text marks
("NaN"), never drawn as made-up points. The through-time chart has one ``<circle class="point">``
per profile value with its data-value (``repr``), and the horizon as ``<line class="horizon">``.
A step chart has its steps in data-steps and each line (``<g class="series">``) its numbers in
data-values, one per step (``repr``, "none" where the report has none): a polyline's points cannot
carry them, and a circle per point would make a 512-step chart of 8 lines ~4x larger.
A step chart tells its lines apart by dash pattern and a label at the line's end, not only colour;
labels of lines that end close together are spread apart (at least LABEL_GAP px) around their ends
and inside the plot, each joined to its line's end by a short grey dotted leader (not data); when
they cannot all fit, the legend alone names the lines. The through-time x axis has ticks at round
numbers of steps back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gradcheck_cli.report.charts import Line, StepChart, TimeProfile, log10
from gradcheck_cli.report.render.common import format_number
from gradcheck_cli.report.render.svg_axes import (
    LEFT,
    PLOT_WIDTH,
    Axis,
    attr,
    data_value,
    decade_ticks,
    linear_ticks,
    log_axis,
    num,
    open_svg,
    shorten,
    spread,
    step_ticks,
    y_grid,
)

PLOT_TOP, PLOT_HEIGHT = 40, 220
HEIGHT = 330
LINE_STYLES = (("#1f77b4", ""), ("#d62728", "6 3"), ("#2ca02c", "2 3"), ("#9467bd", "9 3 2 3"),
               ("#8c564b", "12 4"), ("#e377c2", "4 2 4 6"), ("#17becf", "1 2"), ("#7f7f7f", "8 2 1 2"))
"""Colour and dash pattern of each line of a step chart (at most charts.MAX_LINES lines)."""
MAX_LEGEND_NAME = 90
"""Characters of a layer name in a step chart's legend (from LEFT + 36 px to the chart's right
edge, with its status); a longer one keeps its end, as the end-of-line labels do."""
LEADER_COLOUR = "#8c8c8c"
"""A leader from a line's end to its moved label: grey, never a line's own colour."""
LABEL_GAP = 13
"""px between the baselines of two end-of-line labels: an 11 px font's box does not overlap the next."""


def through_time_svg(profile: TimeProfile, ident: str) -> str:
    """log10 RMS gradient per time step, far end (left) to the end nearest the loss (right)."""
    n = len(profile.values)
    axis = log_axis(profile.values, [], PLOT_TOP, PLOT_TOP + PLOT_HEIGHT)
    step = PLOT_WIDTH / max(1, n - 1)
    horizon = (f"the gradient falls below the horizon fraction {profile.horizon} steps back from the near end"
               if profile.horizon is not None else "the gradient never falls below the horizon fraction")
    desc = (f"{profile.steps} time steps of {profile.layer} ({profile.status.value})"
            + (f", {profile.group} steps per point" if profile.group > 1 else "")
            + f"; the near end is the {profile.near_end} step of the input; {horizon}.")
    parts = open_svg("through-time", ident, HEIGHT, profile.title, desc,
                     extra=f' data-layer="{attr(profile.layer)}"')
    ticks = decade_ticks(axis)
    parts += y_grid(axis, ticks, [str(t) for t in ticks], "log10 gradient RMS per step")
    xs = [LEFT + i * step if n > 1 else LEFT + PLOT_WIDTH / 2 for i in range(n)]
    parts += _polylines([(x, log10(v)) for x, v in zip(xs, profile.values, strict=True)], axis,
                        'stroke="#1f77b4" stroke-width="1.5"')
    for i, (x, value) in enumerate(zip(xs, profile.values, strict=True)):
        position = log10(value)
        if position is None:
            parts.append(f'<text class="mark missing" data-step="{i}" data-value="{data_value(value)}" '
                         f'x="{num(x)}" y="{num(axis.bottom - 4)}" text-anchor="middle" font-size="9">'
                         f'{attr(format_number(value))}</text>')
        else:
            parts.append(f'<circle class="point" data-step="{i}" data-value="{data_value(value)}" '
                         f'cx="{num(x)}" cy="{num(axis.y(position))}" r="2" fill="#1f77b4"/>')
    if profile.horizon is not None and n > 1:
        at = num(LEFT + max(0.0, n - 1 - profile.horizon / profile.group) * step)
        parts.append(f'<line class="horizon" data-value="{profile.horizon}" x1="{at}" y1="{num(axis.top)}" '
                     f'x2="{at}" y2="{num(axis.bottom)}" stroke="#000000" stroke-width="1.5" '
                     f'stroke-dasharray="6 3"/>')
        parts.append(f'<text class="horizon-label" x="{at}" y="{num(axis.top - 4)}" text-anchor="middle">'
                     f'horizon: {profile.horizon} steps</text>')
    def x_of(back: int) -> float:  # k steps back from the near end (a point stands for ``group`` steps)
        return LEFT + max(0.0, n - 1 - back / profile.group) * step if n > 1 else xs[0]

    ticks = step_ticks(0, profile.steps - 1) if n > 1 else [0]
    parts += _x_axis(axis, [(x_of(k), str(k)) for k in ticks],
                     f"steps back from the near end ({profile.near_end} step of the input, nearest the loss)")
    parts.append("</svg>")
    return "\n".join(parts)


def step_svg(chart: StepChart, kind: str, ident: str) -> str:
    """A loss or step-norm chart: one line per charts.Line over the chart's x (steps), with the
    min..max band of all layers when the chart has one."""
    values = [v for line in chart.lines for v in line.values] + list(chart.band_low) + list(chart.band_high)
    bottom = PLOT_TOP + PLOT_HEIGHT
    axis, ticks, labels = (_log_ticks(values, bottom) if chart.log_y else linear_ticks(values, PLOT_TOP, bottom))
    desc = (f"{chart.y_label} over {len(chart.x)} points of {chart.x_label}"
            + ("; log scale" if chart.log_y else "")
            + (f"; {chart.hidden_lines} more layers are inside the grey band (minimum to maximum of all layers)"
               if chart.hidden_lines else "") + ".")
    rows = len(chart.lines) + (1 if chart.hidden_lines else 0)
    parts = open_svg(kind, ident, HEIGHT + 20 * rows, chart.title, desc,
                     extra=f' data-steps="{" ".join(str(step) for step in chart.x)}"')
    parts += y_grid(axis, ticks, labels, ("log10 " if chart.log_y else "") + chart.y_label)
    low, high = chart.x[0], chart.x[-1]

    def x_of(step: int) -> float:
        return LEFT + (PLOT_WIDTH / 2 if high == low else (step - low) / (high - low) * PLOT_WIDTH)

    position = log10 if chart.log_y else _finite
    if chart.band_low:
        parts += _band([(x_of(s), position(a), position(b)) for s, a, b in
                        zip(chart.x, chart.band_low, chart.band_high, strict=True)], axis)
    xs = [x_of(s) for s in chart.x]
    ends = [_end(xs, [position(v) for v in line.values], axis) for line in chart.lines]
    label_ys = iter(_label_positions([end[1] for end in ends if end is not None], axis))
    for i, (line, end) in enumerate(zip(chart.lines, ends, strict=True)):
        at = None if end is None else next(label_ys, None)  # none left: the labels did not fit
        label = None if end is None or at is None else (end[0], end[1], at)
        parts += _line(line, xs, [position(v) for v in line.values], axis, i, label)
    parts += _x_axis(axis, [(x_of(step), str(step)) for step in step_ticks(low, high)], chart.x_label)
    parts += _line_legend(chart.lines, chart.hidden_lines, HEIGHT - 8)
    parts.append("</svg>")
    return "\n".join(parts)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _log_ticks(values: Sequence[float | None], bottom: float) -> tuple[Axis, list[float], list[str]]:
    axis = log_axis(values, [], PLOT_TOP, bottom)
    ticks = decade_ticks(axis)
    return axis, [float(t) for t in ticks], [str(t) for t in ticks]


def _polylines(points: Sequence[tuple[float, float | None]], axis: Axis, style: str,
               dot: str | None = None) -> list[str]:
    """A polyline per run of placeable points: a missing value breaks the line, never bridges it.
    With ``dot`` (a colour), a run of one point (a one-step watch, a value between two NaNs) is
    also a dot of that colour: a polyline of one point draws nothing."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, position in points:
        if position is None:
            runs.append([])
        else:
            runs[-1].append((x, axis.y(position)))
    parts = []
    for run in (run for run in runs if run):
        parts.append(f'<polyline class="line" points="{" ".join(f"{num(x)},{num(y)}" for x, y in run)}" '
                     f'fill="none" {style}/>')
        if dot is not None and len(run) == 1:
            parts.append(f'<circle class="lone" cx="{num(run[0][0])}" cy="{num(run[0][1])}" r="2.5" fill="{dot}"/>')
    return parts


def _band(points: Sequence[tuple[float, float | None, float | None]], axis: Axis) -> list[str]:
    runs: list[list[tuple[float, float, float]]] = [[]]
    for x, low, high in points:
        if low is None or high is None:
            runs.append([])
        else:
            runs[-1].append((x, axis.y(low), axis.y(high)))
    shapes = []
    for run in runs:
        if not run:
            continue
        outline = [f"{num(x)},{num(y)}" for x, _, y in run] + [f"{num(x)},{num(y)}" for x, y, _ in reversed(run)]
        shapes.append(f'<polygon class="band" points="{" ".join(outline)}" fill="#d9d9d9" '
                      f'stroke="#bdbdbd"/>')
    return shapes


def _label_positions(ends: Sequence[float], axis: Axis) -> list[float]:
    """Where the end-of-line labels go: spread LABEL_GAP apart, each label's whole box inside the
    plot's height; none when they cannot all fit there (the legend names every line)."""
    top, bottom = axis.top + LABEL_GAP / 2, axis.bottom - LABEL_GAP / 2
    if (len(ends) - 1) * LABEL_GAP > bottom - top:
        return []
    return spread(ends, LABEL_GAP, top, bottom)


def _end(xs: Sequence[float], positions: Sequence[float | None], axis: Axis) -> tuple[float, float] | None:
    """Where a line's last placeable point is drawn, if it has one."""
    placed = [(x, axis.y(p)) for x, p in zip(xs, positions, strict=True) if p is not None]
    return placed[-1] if placed else None


def _line(line: Line, xs: Sequence[float], positions: Sequence[float | None], axis: Axis, index: int,
          label: tuple[float, float, float] | None) -> list[str]:
    """The line's polylines, a mark per value it cannot place, and its label at ``label`` (the
    line's end x and y, and the label's y, spread from the other labels)."""
    colour, dash = LINE_STYLES[index % len(LINE_STYLES)]
    style = f'stroke="{colour}" stroke-width="1.6"' + (f' stroke-dasharray="{dash}"' if dash else "")
    values = " ".join(data_value(v) or "none" for v in line.values)  # a point's number, one per data-steps
    parts = [f'<g class="series" data-label="{attr(line.label)}" data-status="{line.status.value}" '
             f'data-values="{values}">']
    parts += _polylines(list(zip(xs, positions, strict=True)), axis, style, dot=colour)
    for x, value, position in zip(xs, line.values, positions, strict=True):
        if position is None and value is not None:  # measured, but not placeable: NaN, Inf, 0 on a log axis
            parts.append(f'<text class="mark missing" x="{num(x)}" y="{num(axis.top + 10)}" '
                         f'text-anchor="middle" font-size="9">{attr(format_number(value))}</text>')
    if label is not None:
        x, y, at = label
        if abs(at - y) > 2:  # moved away from its line's end: a leader says which line it names; thin,
            # grey and dotted, so it is not read as the line itself falling (or rising) at the last step
            parts.append(f'<line class="leader" x1="{num(x + 1)}" y1="{num(y)}" x2="{num(x + 7)}" y2="{num(at)}" '
                         f'stroke="{LEADER_COLOUR}" stroke-width="0.7" stroke-dasharray="1 1.5"/>')
        parts.append(f'<text class="line-label" x="{num(x + 9)}" y="{num(at)}" '
                     f'dominant-baseline="middle" fill="{colour}">{attr(shorten(line.label))}</text>')
    parts.append("</g>")
    return parts


def _x_axis(axis: Axis, ticks: Sequence[tuple[float, str]], label: str) -> list[str]:
    parts = []
    for x, text in ticks:
        parts.append(f'<text class="tick" x="{num(x)}" y="{num(axis.bottom + 14)}" '
                     f'text-anchor="middle">{attr(text)}</text>')
    parts.append(f'<text class="axis-label" x="{num(LEFT + PLOT_WIDTH / 2)}" y="{num(axis.bottom + 32)}" '
                 f'text-anchor="middle">{attr(label)}</text>')
    return parts


def _line_legend(lines: Sequence[Line], hidden: int, y: float) -> list[str]:
    parts = ['<g class="legend">']
    for i, line in enumerate(lines):
        colour, dash = LINE_STYLES[i % len(LINE_STYLES)]
        row = num(y + 20 * i)
        parts.append(f'<line x1="{LEFT}" y1="{row}" x2="{LEFT + 30}" y2="{row}" stroke="{colour}" '
                     f'stroke-width="2"' + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")
        status = "" if line.status.value == "healthy" else f" ({line.status.value})"
        text = (f'<text x="{LEFT + 36}" y="{row}" dominant-baseline="middle">'
                f'{attr(shorten(line.label, MAX_LEGEND_NAME) + status)}</text>')
        # A shortened name is whole in a tooltip (a <title> inside the <text> would be part of its words).
        parts.append(text if len(line.label) <= MAX_LEGEND_NAME else
                     f'<g class="legend-entry"><title>{attr(line.label + status)}</title>{text}</g>')
    if hidden:
        row = num(y + 20 * len(lines))
        parts.append(f'<text x="{LEFT + 36}" y="{row}" dominant-baseline="middle">grey band: minimum to '
                     f'maximum of all layers ({hidden} more not drawn as lines)</text>')
    parts.append("</g>")
    return parts
