"""The text marks of the flow chart's bars (svg.py): status is never shown by colour alone.

A bar wide enough for its mark gets its own (``<text class="mark status|missing"
data-layer=...>``) above its top. When the bars are narrower than their marks (a long or grouped
model, bars a few px wide), one mark per run of consecutive bars with the same mark is drawn
instead, centred over the run with a bracket spanning it and the number of bars it marks ("V ×60";
a grouped bar is marked by its worst layer, so the bars, not the layers, are what is counted), so
the glyphs never merge into a band. Runs of one mark closer together than
MERGE_GAP share one mark (a bracket across them with a tick over each run), so a status that comes
and goes every few bars is one mark, not a stack of them. Marks are drawn after the threshold lines, on
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

ROW = 14.0
"""px between two rows of marks: a 9 px bold glyph with its halo, and under it the bracket of a run's mark."""
MERGE_GAP = 30.0
"""px: runs of the same mark closer than this share one mark (their own marks would collide)."""
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
    groups = itertools.groupby(enumerate(marks), key=lambda pair: (pair[1].index - pair[0], pair[1].text, pair[1].kind))
    clusters: list[list[list[Mark]]] = []
    for _, members in groups:
        run = [mark for _, mark in members]
        same = [c for c in clusters if (c[0][0].text, c[0][0].kind) == (run[0].text, run[0].kind)]
        if same and run[0].left - same[-1][-1][-1].right < MERGE_GAP:  # across runs of other marks too
            same[-1].append(run)
        else:
            clusters.append([run])
    parts: list[str] = []
    for cluster in clusters:
        parts += _run_mark(cluster, thresholds, placed)
    return parts


def _own_mark(mark: Mark, thresholds: Sequence[float], placed: list[tuple[float, float, float]]) -> str:
    middle = (mark.left + mark.right) / 2
    y = _free_y(middle, mark.width(), mark.top - 3, thresholds, placed)
    size = MISSING_SIZE if mark.kind == "missing" else STATUS_SIZE
    return (f'<text class="mark {mark.kind}" data-layer="{attr(mark.layer)}" x="{num(middle)}" y="{num(y)}" '
            f'text-anchor="middle" font-size="{size}" font-weight="bold" {HALO}>{attr(mark.text)}</text>')


def _run_mark(runs: Sequence[Sequence[Mark]], thresholds: Sequence[float],
              placed: list[tuple[float, float, float]]) -> list[str]:
    """One mark over runs of bars with the same mark: a bracket spanning them (a tick down over
    each run) and the mark with the number of layers it stands for."""
    marks = [mark for run in runs for mark in run]
    first, last = marks[0], marks[-1]
    layers = sum(mark.layers for mark in marks)
    text = first.text if len(marks) == 1 else f"{first.text} ×{len(marks)}"
    left, right = first.left, last.right
    top = min(mark.top for mark in marks) - 2
    y = _free_y((left + right) / 2, first.width(text), top - 3, thresholds, placed)
    parts = [f'<g class="mark-run" data-first="{attr(first.layer)}" data-last="{attr(last.layer)}" '
             f'data-bars="{len(marks)}" data-runs="{len(runs)}" data-layers="{layers}">']
    if len(marks) > 1:
        bracket = y + 3  # just under its mark: moved up with it, so two marks' brackets stay apart
        ticks = " ".join(f"M{num(run[0].left)},{num(bracket + 3)} V{num(bracket)} H{num(run[-1].right)} "
                         f"V{num(bracket + 3)}" for run in runs)
        parts.append(f'<path class="run-bracket" d="M{num(left)},{num(bracket)} H{num(right)} {ticks}" '
                     f'fill="none" stroke="#000000" stroke-width="1"/>')
    size = MISSING_SIZE if first.kind == "missing" else STATUS_SIZE
    parts.append(f'<text class="mark {first.kind} run" x="{num((left + right) / 2)}" y="{num(y)}" '
                 f'text-anchor="middle" font-size="{size}" font-weight="bold" {HALO}>'
                 f'<title>{attr(f"{len(marks)} bars of {layers} layers: {first.layer} to {last.layer}")}</title>'
                 f'{attr(text)}</text>')
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
