"""grad-trend: a layer's gradient norm growing or decaying geometrically over steps (training watch).

Geometric change is a straight line in log space. Each layer keeps its last `trend_window` log
gradient norms (consecutive steps; a zero or non-finite norm restarts the window) and the
least-squares line through them (analyse/line_fit.py). A trend is found when the line changes the
norm by at least `trend_min_total` (a decade) over the window and explains at least `trend_min_r2`
of the log norms' variance: a single jump (a level shift) explains at most 3/4 of it, batch noise
none, a geometric trend all but the noise. On a quadratic, a learning rate above the stability
limit 2/L grows the error, and with it the gradient, by |1 - lr L| per step (LeCun et al. 1998):
the geometric growth this rule finds before the explosion (docs/findings/grad-trend.md).

Growth is always reported. Decay is how gradients behave while a model converges (on a
well-conditioned problem gradient descent shrinks the gradient geometrically), so a decay is
reported only when the loss did not fall over the same window: its least-squares slope is not
two standard errors below zero. A layer whose gradient fades while the loss stays put is a
layer that stopped learning.

The start of a trend is where the window that found it is best fitted by a level that turns into
the line (a hinge, least squares over every turning step: line_fit.break_point), at the earliest
the window's first step; the trend lasts while the window's line still makes a decade in its direction, and
its per-step and total factors are fitted over that span. Bounded: per layer one window and the
first trend's sums; one window for the loss. Pure: no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gradcheck_cli.analyse.line_fit import Line, LineSums, LineWindow, break_point
from gradcheck_cli.analyse.thresholds import Thresholds
from gradcheck_cli.measure.series import StepBlock
from gradcheck_cli.report.evidence import GradTrendEvidence
from gradcheck_cli.report.records import Finding, FindingKind, Severity

LOSS_FELL_T = -2.0
"""The loss fell over a window when its slope is at least two standard errors below zero (the
usual ~95% two-sided bound of a regression slope)."""


@dataclass
class Trend:
    """One layer's first trend: its span and the line through the log norms of the span."""

    start: int
    last: int
    growth: bool
    r2: float
    sums: LineSums = field(default_factory=LineSums)
    open: bool = True

    def add(self, step: int, log_norm: float) -> None:
        self.sums.add(step - self.start, log_norm)
        self.last = step

    def evidence(self, window: int, layers: int) -> GradTrendEvidence:
        line = self.sums.fit()
        slope = line.slope if line is not None else 0.0
        per_step = math.exp(slope)
        return GradTrendEvidence(self.start, self.last, "growth" if self.growth else "decay", per_step,
                                 math.exp(slope * (self.last - self.start)), self.r2, window, layers)


class LayerTrend:
    """A layer's window of log gradient norms and its first trend."""

    def __init__(self, size: int) -> None:
        self.window = LineWindow(size)
        self.step = -1
        """The step of the window's last value."""
        self.trend: Trend | None = None

    def add(self, step: int, log_norm: float) -> None:
        if not math.isfinite(log_norm) or step != self.step + 1:
            self.window.clear()
            self._close()
            if not math.isfinite(log_norm):
                return
        self.window.add(log_norm)
        self.step = step
        if self.trend is not None and self.trend.open:
            self.trend.add(step, log_norm)

    def _close(self) -> None:
        if self.trend is not None:
            self.trend.open = False

    def first_step(self) -> int:
        return self.step - len(self.window.values) + 1

    def open(self, line: Line) -> None:
        start = self.first_step() + break_point(list(self.window.values))
        trend = Trend(start, start, line.slope > 0, line.r2)
        first = self.first_step()
        for offset, value in enumerate(self.window.values):
            if first + offset >= start:
                trend.add(first + offset, value)
        self.trend = trend


class GradTrends:
    """Every layer's trend state, and the loss's window (a decay counts only while it did not fall)."""

    def __init__(self, layers: list[str], thresholds: Thresholds) -> None:
        self.layers = list(layers)
        self.size = thresholds.trend_window
        self.min_log_total = math.log(thresholds.trend_min_total)
        self.min_r2 = thresholds.trend_min_r2
        self.states = [LayerTrend(self.size) for _ in self.layers]
        self.loss = LineWindow(self.size)

    def add(self, block: StepBlock) -> None:
        for step, loss, row in zip(block.steps, block.loss, block.grad_sq):
            if math.isfinite(loss):
                self.loss.add(loss)
            for state, grad_sq in zip(self.states, row):
                state.add(step, 0.5 * math.log(grad_sq) if grad_sq > 0 else math.nan)
                self._judge(state)

    def _judge(self, state: LayerTrend) -> None:
        window = state.window
        if not window.full:
            return
        slope = window.slope()
        large = abs(slope) * (self.size - 1) >= self.min_log_total
        if state.trend is not None:
            if state.trend.open and not (large and (slope > 0) == state.trend.growth):
                state.trend.open = False  # the window no longer makes a decade in its direction
            return
        if not large:
            return
        line = window.fit()
        if line.r2 < self.min_r2 or (line.slope < 0 and self._loss_fell()):
            return
        state.open(line)

    def _loss_fell(self) -> bool:
        """The loss window's slope is two standard errors below zero (unknown while it fills: fell)."""
        if not self.loss.full:
            return True
        return self.loss.fit().t_statistic <= LOSS_FELL_T

    def first(self) -> tuple[str, GradTrendEvidence] | None:
        """The earliest growth trend over all layers (a decay only when nothing grew), with the
        number of layers that had a trend in the same direction."""
        trends = [(index, state.trend) for index, state in enumerate(self.states) if state.trend is not None]
        growth = [(t.start, index, t) for index, t in trends if t.growth]
        chosen = growth or [(t.start, index, t) for index, t in trends]
        if not chosen:
            return None
        _, index, trend = min(chosen, key=lambda item: item[:2])
        return self.layers[index], trend.evidence(self.size, len(chosen))

    def findings(self) -> list[Finding]:
        """The grad-trend finding (at most one), at the step its trend started, rank 0 (the
        blocks are reduced across ranks: timeline.REPORT_RANK)."""
        first = self.first()
        if first is None:
            return []
        layer, e = first
        return [Finding(FindingKind.GRAD_TREND, layer, Severity.WARNING, message(layer, e), e, step=e.step, rank=0)]


def message(layer: str, e: GradTrendEvidence) -> str:
    verb = "grew" if e.direction == "growth" else "decayed while the loss did not fall"
    others = f"; {e.layers} layers had such a trend" if e.layers > 1 else ""
    return (f"{layer}'s gradient norm {verb} geometrically from step {e.step} to {e.last_step}: "
            f"x{e.per_step:.4g} per step, x{e.total:.3g} in all (the line explains {e.r2:.0%} of the "
            f"log norms over {e.window} steps){others}")
