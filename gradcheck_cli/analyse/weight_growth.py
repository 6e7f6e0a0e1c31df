"""weight-growth: a layer's weights growing steadily, and its gradients with them (training watch).

Weights that keep growing make the layer's Jacobian, and the gradients that flow through it,
grow with them until they explode: without weight decay nothing pulls the norm back (Krogh &
Hertz 1992; Wortsman et al. 2023 trace large-scale training instabilities to growing logits,
queries and keys). Healthy training also grows its weights from their init, but its gradients
shrink or stay while the loss falls; what separates the two is the gradient growing WITH the
weights.

Each block brings one weight norm per layer (StepBlock.weight_sq at its last step) and the
block's gradient norms (their geometric mean is the block's point). A layer's growth runs from its
lowest weight norm so far (a new low restarts it) to its latest block, and it is a finding when
over that span
* the weight norm grew at least `weight_growth_min_total`-fold, steadily: the line through the log
  weight norms explains at least `trend_min_r2` of their variance (analyse/line_fit.py), and
* the gradient norm grew at least `trend_min_total`-fold (a decade, as grad-trend), or the run went
  non-finite after the growth started and the gradient grew at least as much as the weights.
Non-finite weights and blocks without a finite gradient are left out. The slope of the log
weight norm is the growth rate per step that weight-decay's value offsets (analyse/fix_timeline.py,
docs/fixes/weight-decay.md). Bounded: per layer the run's start, its last point, five sums and the
first finding. Pure: no torch.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace

from gradcheck_cli.analyse.line_fit import LineSums, break_point
from gradcheck_cli.analyse.thresholds import Thresholds
from gradcheck_cli.measure.series import StepBlock
from gradcheck_cli.report.evidence import WeightGrowthEvidence
from gradcheck_cli.report.records import Finding, FindingKind, Severity

MIN_POINTS = 3
"""Block ends a growth needs after its start: two points make any line."""
RECENT = 256
"""Block ends each layer keeps to place the start of a growth (a hinge fit over them)."""


@dataclass(frozen=True)
class Point:
    step: int
    log_weight: float
    log_grad: float | None
    """The block's mean log gradient norm (None: no finite, nonzero gradient in the block)."""


class LayerGrowth:
    """One layer's recent block ends, its lowest weight norm since the last new low, and the
    growth found (its start, the line through its log weight norms, its last point)."""

    def __init__(self) -> None:
        self.recent: deque[Point] = deque(maxlen=RECENT)
        self.low: Point | None = None
        self.start: Point | None = None
        """The start of the growth found in the current run; None: none found in it."""
        self.sums = LineSums()
        self.found: WeightGrowthEvidence | None = None

    def add(self, point: Point) -> None:
        if self.low is None or point.log_weight <= self.low.log_weight:
            self.low, self.start = point, None  # a new low: a new run
        self.recent.append(point)
        if self.start is not None:
            self.sums.add(point.step - self.start.step, point.log_weight)

    def growth(self, nonfinite_after: bool) -> WeightGrowthEvidence | None:
        """The current run's growth: from where its log weight norms best turn from a level into
        a line (line_fit.break_point over the run's recent points) to the last block end."""
        if self.start is not None:
            return self._evidence(self.start, self.sums, nonfinite_after)
        low = self.low
        points = [p for p in self.recent if low is not None and p.step >= low.step]
        if len(points) < MIN_POINTS:
            return None
        points = points[break_point([p.log_weight for p in points], MIN_POINTS):]
        sums = LineSums()
        for p in points:
            sums.add(p.step - points[0].step, p.log_weight)
        return self._evidence(points[0], sums, nonfinite_after)

    def keep(self, evidence: WeightGrowthEvidence) -> None:
        """The growth is a finding: fix its start and extend it block by block from now on."""
        if self.start is None:
            self.start = next(p for p in self.recent if p.step == evidence.step)
            self.sums = LineSums()
            for p in self.recent:
                if p.step >= self.start.step:
                    self.sums.add(p.step - self.start.step, p.log_weight)
        if self.found is None or self.found.step == evidence.step:
            self.found = evidence

    def _evidence(self, start: Point, sums: LineSums, nonfinite_after: bool) -> WeightGrowthEvidence | None:
        last, line = self.recent[-1], sums.fit()
        if line is None or sums.n < MIN_POINTS or start.log_grad is None or last.log_grad is None:
            return None
        return WeightGrowthEvidence(start.step, last.step, math.exp(start.log_weight),
                                    math.exp(last.log_weight - start.log_weight),
                                    math.exp(last.log_grad - start.log_grad), line.slope, line.r2,
                                    nonfinite_after)

    def may_grow(self, min_weight: float, min_grad: float) -> bool:
        """A cheap test before the fit: since the low, the weights grew min_weight-fold and the
        gradient min_grad-fold."""
        low, last = self.low, self.recent[-1] if self.recent else None
        if low is None or last is None or low.log_grad is None or last.log_grad is None:
            return False
        return (last.log_weight - low.log_weight >= math.log(min_weight)
                and last.log_grad - low.log_grad >= math.log(min_grad))


class WeightGrowths:
    """Every layer's growth; the earliest finding over the layers."""

    def __init__(self, layers: list[str], thresholds: Thresholds) -> None:
        self.layers = list(layers)
        self.t = thresholds
        self.states = [LayerGrowth() for _ in self.layers]

    def add(self, block: StepBlock) -> None:
        last_step = block.first_step + len(block.loss) - 1
        for column, (state, weight_sq) in enumerate(zip(self.states, block.weight_sq)):
            if not (math.isfinite(weight_sq) and weight_sq > 0):
                continue
            state.add(Point(last_step, 0.5 * math.log(weight_sq), _mean_log_norm(block, column)))
            if state.start is None and not state.may_grow(self.t.weight_growth_min_total, self.t.trend_min_total):
                continue
            evidence = state.growth(nonfinite_after=False)
            if evidence is not None and self._is_growth(evidence):
                state.keep(evidence)

    def _is_growth(self, e: WeightGrowthEvidence) -> bool:
        if e.weight_total < self.t.weight_growth_min_total or e.r2 < self.t.trend_min_r2:
            return False
        return e.grad_total >= self.t.trend_min_total or (e.nonfinite_after and e.grad_total >= e.weight_total)

    def first(self, nonfinite_step: int | None) -> tuple[str, WeightGrowthEvidence] | None:
        """The layer whose growth started earliest (then the layer order), with the count of
        layers that grew so; `nonfinite_step`: the run's first NaN/Inf step, if any."""
        found: list[tuple[int, int, WeightGrowthEvidence]] = []
        for index, state in enumerate(self.states):
            evidence = state.found
            if evidence is None and nonfinite_step is not None and state.low is not None \
                    and state.low.step <= nonfinite_step:
                candidate = state.growth(nonfinite_after=True)
                evidence = candidate if candidate is not None and self._is_growth(candidate) else None
            if evidence is not None:
                found.append((evidence.step, index, evidence))
        if not found:
            return None
        _, index, evidence = min(found, key=lambda item: item[:2])
        return self.layers[index], _with_layers(evidence, len(found))

    def findings(self, nonfinite_step: int | None) -> list[Finding]:
        """The weight-growth finding (at most one), at the step the growth started, rank 0."""
        first = self.first(nonfinite_step)
        if first is None:
            return []
        layer, e = first
        return [Finding(FindingKind.WEIGHT_GROWTH, layer, Severity.WARNING, message(layer, e), e, step=e.step,
                        rank=0)]


def message(layer: str, e: WeightGrowthEvidence) -> str:
    end = "; then the run went non-finite" if e.nonfinite_after else ""
    others = f"; {e.layers} layers grew so" if e.layers > 1 else ""
    return (f"{layer}'s weights grew steadily from step {e.step} to {e.last_step}: norm x{e.weight_total:.3g} "
            f"from {e.weight_norm:.3g} ({e.rate:.3g} per step in log), and its gradient norm with them "
            f"x{e.grad_total:.3g}{end}{others}")


def _mean_log_norm(block: StepBlock, column: int) -> float | None:
    logs = [0.5 * math.log(row[column]) for row in block.grad_sq if math.isfinite(row[column]) and row[column] > 0]
    return math.fsum(logs) / len(logs) if logs else None


def _with_layers(evidence: WeightGrowthEvidence, layers: int) -> WeightGrowthEvidence:
    return replace(evidence, layers=layers)
