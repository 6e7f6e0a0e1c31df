"""The text marks of the flow chart's bars (svg.py): status is never shown by colour alone.

A bar wide enough for its mark gets its own (``<text class="mark status|missing"
data-layer=...>``) above its top. When the bars are narrower than their marks (a long or grouped
model, bars a few px wide), one mark per run of consecutive bars with the same mark is drawn
instead, centred over the run with a bracket spanning it and the number of layers it covers
("V ×300"), so the glyphs never merge into a band. Marks are drawn after the threshold lines, on
a white halo, and never on a threshold line: a mark that would sit on one moves above it; marks
that would overlap each other move up a row.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from gradcheck_cli.report.records import Status
from gradcheck_cli.report.render.svg_axes import HALO, attr, num

STATUS_MARKS = {Status.VANISHING: "V", Status.EXPLODING: "E", Status.NONFINITE: "NaN",
                Status.FROZEN: "F", Status.UNUSED: "U"}
"""The glyph above a non-healthy bar: status in text, not in colour alone."""

ROW = 11.0
"""px between two rows of marks (a 9 px bold glyph and its halo)."""
STATUS_SIZE, MISSING_SIZE = 9, 11
"""Font sizes of a status glyph and of the word for a value a log axis cannot place."""


@dataclass(frozen=True)
class Mark:
    """What one bar's mark says and where its bar is."""

    index: int
    layer: str
    layers: int
    left: float
    right: float
    top: float
    """The mark's baseline sits just above this y (the bar's top, or the middle of a placeholder)."""
    text: str
    kind: str
    """"status" (the status glyph over a drawn bar) or "missing" (the value is not drawn as a bar)."""

    def width(self, text: str | None = None) -> float:
        """Estimated drawn width of ``text`` (the mark's own by default) in px."""
        size = MISSING_SIZE if self.kind == "missing" else STATUS_SIZE
        return 0.62 * size * len(self.text if text is None else text) + 2


def marks_svg(marks: Sequence[Mark], slot: float, thresholds: Sequence[float]) -> list[str]:
    """Every bar's own mark when each fits its slot, else one mark per run of equal marks."""
    placed: list[tuple[float, float, float]] = []
    if all(mark.width() <= slot for mark in marks):
        return [_own_mark(mark, thresholds, placed) for mark in marks]
    parts: list[str] = []
    runs = itertools.groupby(enumerate(marks), key=lambda pair: (pair[1].index - pair[0], pair[1].text, pair[1].kind))
    for _, members in runs:
        parts += _run_mark([mark for _, mark in members], thresholds, placed)
    return parts


def _own_mark(mark: Mark, thresholds: Sequence[float], placed: list[tuple[float, float, float]]) -> str:
    middle = (mark.left + mark.right) / 2
    y = _free_y(middle, mark.width(), mark.top - 3, thresholds, placed)
    size = MISSING_SIZE if mark.kind == "missing" else STATUS_SIZE
    return (f'<text class="mark {mark.kind}" data-layer="{attr(mark.layer)}" x="{num(middle)}" y="{num(y)}" '
            f'text-anchor="middle" font-size="{size}" font-weight="bold" {HALO}>{attr(mark.text)}</text>')


def _run_mark(run: Sequence[Mark], thresholds: Sequence[float], placed: list[tuple[float, float, float]]) -> list[str]:
    """One mark over a run of bars with the same mark: a bracket spanning the run (when it has
    more than one bar) and the mark with the number of layers it stands for."""
    first, last = run[0], run[-1]
    layers = sum(mark.layers for mark in run)
    text = first.text if layers == 1 else f"{first.text} ×{layers}"
    left, right = first.left, last.right
    top = min(mark.top for mark in run) - 2
    y = _free_y((left + right) / 2, first.width(text), top - 3, thresholds, placed)
    parts = [f'<g class="mark-run" data-first="{attr(first.layer)}" data-last="{attr(last.layer)}" '
             f'data-bars="{len(run)}" data-layers="{layers}">']
    if len(run) > 1:
        parts.append(f'<path class="run-bracket" d="M{num(left)},{num(top + 3)} V{num(top)} H{num(right)} '
                     f'V{num(top + 3)}" fill="none" stroke="#000000" stroke-width="1"/>')
    size = MISSING_SIZE if first.kind == "missing" else STATUS_SIZE
    parts.append(f'<text class="mark {first.kind} run" x="{num((left + right) / 2)}" y="{num(y)}" '
                 f'text-anchor="middle" font-size="{size}" font-weight="bold" {HALO}>'
                 f'<title>{attr(f"{layers} layers: {first.layer} to {last.layer}")}</title>{attr(text)}</text>')
    parts.append("</g>")
    return parts


def _free_y(middle: float, width: float, y: float, thresholds: Sequence[float],
            placed: list[tuple[float, float, float]]) -> float:
    """The baseline nearest ``y`` (never lower) whose text is off every threshold line and clear of
    the marks placed so far; the chosen box is added to ``placed``."""
    left, right = middle - width / 2, middle + width / 2
    for _ in range(12):
        on_line = [line for line in thresholds if y - ROW + 2 <= line <= y + 2]
        crowded = [row for x0, x1, row in placed if x0 < right and left < x1 and abs(row - y) < ROW]
        if not on_line and not crowded:
            break
        y = min([line - 3 for line in on_line] + [row - ROW for row in crowded])
    placed.append((left, right, y))
    return y
