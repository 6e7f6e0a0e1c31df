"""The watch report's per-layer time series, sampled into a bounded number of points.

A watched run may last a million steps; its report keeps at most MAX_POINTS of them, so it is as
small as a report of a thousand steps (report/series.py, README "The watch report"). Two
decimators share the budget: one samples steps (every `stride`-th step, 0, stride, 2 stride, ...),
one samples blocks (the last step of every `block_stride`-th flush, the only steps where the watch
reads the weight norms: measure/series.py StepBlock.weight_sq). When a decimator holds more than
its share it keeps every other point and doubles its stride, the usual way to keep a plot's
resolution bounded over an unknown length. Always kept besides: the first step (step 0 is on
every stride), the last step seen, and a few pinned steps (where a finding started, if the block
holding that step is still at hand when the finding is known). Pure: no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gradcheck_cli.measure.series import StepBlock
from gradcheck_cli.report.series import METRICS, LayerSeries, Point, WatchSeries

MAX_POINTS = 512
"""Regularly sampled points at most: MAX_STEP_POINTS by step, MAX_BLOCK_POINTS at flushes."""
MAX_BLOCK_POINTS = 128
MAX_STEP_POINTS = MAX_POINTS - MAX_BLOCK_POINTS
MAX_PINS = 16
"""Pinned steps (finding starts) at most; one per finding kind is the usual case."""


@dataclass(frozen=True)
class SeriesPoint:
    """One sampled step: the loss and, per layer, the three metrics (None: not measured)."""

    step: int
    loss: Point
    grad_norm: tuple[Point, ...]
    update_to_weight: tuple[Point, ...]
    weight_norm: tuple[Point, ...]


class Decimator:
    """Keeps the points whose index is a multiple of `stride`; at `capacity`, doubles it."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.stride = 1
        self.points: list[tuple[int, SeriesPoint]] = []

    def wants(self, index: int) -> bool:
        return index % self.stride == 0

    def add(self, index: int, point: SeriesPoint) -> None:
        self.points.append((index, point))
        while len(self.points) > self.capacity:
            self.stride *= 2
            self.points = [(i, p) for i, p in self.points if i % self.stride == 0]


class SeriesSampler:
    """Folds each block's rows into the two decimators (module docstring)."""

    def __init__(self) -> None:
        self.by_step = Decimator(MAX_STEP_POINTS)
        self.by_block = Decimator(MAX_BLOCK_POINTS)
        self.blocks = 0
        self.last_block: StepBlock | None = None
        """A reference to the latest block (the watch's own, not a copy): its last row is the last
        point, and a finding known only after its block arrived can still pin its step."""
        self.pins: dict[int, SeriesPoint] = {}

    def add(self, block: StepBlock) -> None:
        if not block.loss:
            return
        for row, step in enumerate(block.steps):
            if self.by_step.wants(step):
                self.by_step.add(step, _point(block, row, weights=False))
        if self.by_block.wants(self.blocks):
            self.by_block.add(self.blocks, _point(block, len(block.loss) - 1, weights=True))
        self.blocks += 1
        self.last_block = block

    def pin(self, step: int) -> None:
        """Keep `step` whatever the strides, if the latest block holds it (else it is gone)."""
        block = self.last_block
        if block is None or step in self.pins or len(self.pins) >= MAX_PINS or step not in block.steps:
            return
        row = step - block.first_step
        self.pins[step] = _point(block, row, weights=row == len(block.loss) - 1)

    def series(self, names: list[str]) -> WatchSeries:
        """The kept points in step order; at a step kept twice, the point with the weight norms."""
        chosen: dict[int, SeriesPoint] = {}
        block = self.last_block
        extra = [_point(block, len(block.loss) - 1, weights=True)] if block is not None and block.loss else []
        for point in [p for _, p in self.by_step.points] + list(self.pins.values()) + extra + \
                [p for _, p in self.by_block.points]:
            chosen[point.step] = point  # the block points (with weights) come last and win
        points = [chosen[step] for step in sorted(chosen)]
        layers = tuple(LayerSeries(name, *(tuple(getattr(p, metric)[k] for p in points) for metric in METRICS))
                       for k, name in enumerate(names))
        return WatchSeries(tuple(p.step for p in points), tuple(p.loss for p in points), layers)


def _point(block: StepBlock, row: int, weights: bool) -> SeriesPoint:
    """Row `row` of `block` as plain numbers: norms from the squared norms the watch reads."""
    layers = len(block.grad_sq[row])
    grad = tuple(norm_of(v) for v in block.grad_sq[row])
    ratios = block.update_ratio[row] if block.update_ratio is not None else None
    # The watch writes NaN in every column of a row it did not measure (every 10th step only).
    update: tuple[Point, ...] = (None,) * layers if ratios is None or all(math.isnan(v) for v in ratios) \
        else tuple(ratios)
    weight: tuple[Point, ...] = tuple(norm_of(v) for v in block.weight_sq) if weights else (None,) * layers
    return SeriesPoint(block.first_step + row, block.loss[row], grad, update, weight)


def norm_of(square: float) -> float:
    """A norm from its square; NaN/Inf stay as they are (sqrt of NaN is NaN, of Inf is Inf)."""
    return math.sqrt(square) if square >= 0 else math.nan
