"""The primitives every SVG chart of the HTML page shares (svg.py: the flow chart, svg_series.py:
the charts over time): sizes, coordinates written the same on every platform, escaping, the
opening of a chart with its title, and the axes with their ticks.

Pure string building, no state. Tick labels are chosen so that two ticks never print alike: a
linear axis takes its decimals from the tick step, not from a fixed number of significant digits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from gradcheck_cli.report.charts import log10

WIDTH = 960
"""Every chart's width in px (the page scales it down on a narrow screen, never up)."""
LEFT, RIGHT = 80, 190
"""Margins around a plot area: tick labels and axis title left, threshold and line labels right."""
PLOT_WIDTH = WIDTH - LEFT - RIGHT
MAX_NAME = 22
"""Characters of a layer name under a bar: longer names keep their end ("…layers.11.mlp.fc2"), the part
that tells siblings apart; the full name is in the bar's tooltip and the layer table."""
FONT = 'font-family="sans-serif" font-size="11"'
MAX_TITLE = 100
"""Characters of a chart's drawn title (14 px bold, ~8 px a character, in WIDTH - LEFT px); a longer
one (a recurrent layer's long name) is cut with "…" on the chart, whole in its <title>."""
HALO = 'stroke="#ffffff" stroke-width="3" stroke-linejoin="round" paint-order="stroke"'
"""A text's white outline drawn under its letters: readable over a bar, a grid or a threshold line."""


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
            f'<text class="chart-title" x="{LEFT}" y="18" font-size="14" font-weight="bold">'
            f'{attr(title if len(title) <= MAX_TITLE else title[:MAX_TITLE - 1] + "…")}</text>']


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


def round_step(raw: float) -> float:
    """The smallest of 1, 2, 5 or 10 times a power of ten that is at least ``raw`` (> 0)."""
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def linear_ticks(values: Sequence[float | None], top: float, bottom: float) -> tuple[Axis, list[float], list[str]]:
    """A linear axis over the finite values, with round ticks (1, 2 or 5 times a power of ten)."""
    finite = [v for v in values if v is not None and math.isfinite(v)] or [0.0, 1.0]
    low, high = min(finite), max(finite)
    if high == low:
        low, high = low - 1.0, high + 1.0
    step = round_step((high - low) / 5)
    first, last = math.floor(low / step), math.ceil(high / step)
    ticks = [k * step for k in range(first, last + 1)]
    return Axis(first * step, last * step, top, bottom), ticks, tick_labels(ticks, step)


def tick_labels(ticks: Sequence[float], step: float) -> list[str]:
    """Labels of evenly spaced ticks with as many digits as the step needs, so no two print alike
    (5.545 and 5.550, not 5.55 twice); scientific notation for very large or small numbers."""
    biggest = max(abs(t) for t in ticks)
    step_digit = math.floor(math.log10(step) + 1e-9)
    if step >= 1e-3 and biggest < 1e5:
        decimals = max(0, -step_digit)
        labels = [f"{0.0 if abs(t) < step / 1e6 else t:.{decimals}f}" for t in ticks]
    else:
        digits = max(0, math.floor(math.log10(biggest)) - step_digit)
        labels = [f"{0.0 if abs(t) < step / 1e6 else t:.{digits}e}" for t in ticks]
    return labels


def step_ticks(low: int, high: int) -> list[int]:
    """Round steps (1, 2 or 5 times a power of ten apart) from ``low`` to ``high``, both included."""
    if high <= low:
        return [low]
    spacing = max(1, int(round_step((high - low) / 6)))
    inner = range(math.ceil(low / spacing) * spacing, high + 1, spacing)
    # An inner tick closer than half a spacing to an end would print over the end's label.
    return [low, *(t for t in inner if low + spacing / 2 <= t <= high - spacing / 2), high]


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


def spread(wanted: Sequence[float], gap: float, top: float, bottom: float) -> list[float]:
    """Positions as near ``wanted`` as can be with at least ``gap`` between any two, kept within
    ``top``..``bottom`` where they fit (labels at the ends of lines that end close together).

    Labels that would overlap form a run centred on the mean of what its members want, so a
    crowd of line ends gets labels above and below it (pushing each one down from the first
    drew them all under the lines, as if every line fell at its end)."""
    order = sorted(range(len(wanted)), key=lambda i: (wanted[i], i))
    runs: list[tuple[float, list[int]]] = []  # (first position, members in order)
    for i in order:
        members = [i]
        start = _run_start(wanted, members, gap, top, bottom)
        while runs and runs[-1][0] + gap * len(runs[-1][1]) > start:  # overlaps the run above: join it
            members = runs.pop()[1] + members
            start = _run_start(wanted, members, gap, top, bottom)
        runs.append((start, members))
    result = [0.0] * len(wanted)
    for start, members in runs:
        for k, i in enumerate(members):
            result[i] = start + gap * k
    return result


def _run_start(wanted: Sequence[float], members: Sequence[int], gap: float, top: float, bottom: float) -> float:
    """Where a run of labels ``gap`` apart starts: centred on what its members want, inside top..bottom
    (from top when it is longer than that)."""
    middle = sum(wanted[m] for m in members) / len(members)
    start = middle - gap * (len(members) - 1) / 2
    return max(top, min(start, bottom - gap * (len(members) - 1)))
