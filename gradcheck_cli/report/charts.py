"""The charts of a report, as data: what the HTML page (render/html.py, inline SVG) and
`gradcheck plot` (render/images.py, matplotlib) draw, so both draw the same numbers.

Four chart kinds, each built from a Report alone (no torch, no analysis):
- flow: log10 of each layer's gradient norm and grad/weight ratio along depth (execution order),
  with the absolute thresholds of the vanishing and exploding rules, and each layer's status;
- through-time: a recurrent layer's log10 gradient per time step, far end to near end, with its
  effective horizon;
- loss: the loss per probe batch and step (a scan) or per sampled optimizer step (a watch);
- step norms: per-layer gradient norms over a watch's sampled steps or a scan's --steps.

Large models stay readable: past MAX_BARS layers the flow chart groups consecutive layers into
one bar each (median, minimum and maximum of the group, its worst status), past MAX_TIME_POINTS
steps a profile is grouped the same way, and the step-norm chart draws at most MAX_LINES layers
(the flagged ones first) over the band (minimum to maximum) of all of them.
All values are the report's own numbers: a group's median is one of its layers' values, and only a
grouped time profile (over MAX_TIME_POINTS steps) draws means of consecutive steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from gradcheck_cli.report.records import VERDICT_ORDER, LayerReport, Report, Status

MAX_BARS = 200
"""At most this many bars in a flow chart; more layers are grouped (a 1,000-layer model: 5 per bar)."""
MAX_TIME_POINTS = 200
"""At most this many points in a through-time profile; longer sequences are grouped."""
MAX_LINES = 8
"""At most this many per-layer lines in a step-norm chart."""

STATUS_RANK = {status: rank for rank, status in enumerate(VERDICT_ORDER)}
"""Worst first: nonfinite, exploding, vanishing, healthy; frozen and unused rank after them."""


@dataclass(frozen=True)
class ChartThresholds:
    """The lines a flow chart draws: the absolute grad/weight thresholds of the vanishing and
    exploding rules (thresholds.vanish_grad_to_weight, thresholds.explode_grad_to_weight)."""

    vanish_grad_to_weight: float = 1e-7
    explode_grad_to_weight: float = 1e3


@dataclass(frozen=True)
class Bar:
    """One bar of a flow chart: a layer, or a group of consecutive layers (count > 1)."""

    label: str
    """The layer's name, or "first … last" for a group."""
    first: int
    """Position of the first layer in the chart's layer order."""
    count: int
    status: Status
    """The layer's status; for a group, its worst status."""
    grad_norm: float | None
    grad_to_weight: float | None
    """The layer's numbers; for a group, the median layer's (by grad/weight)."""
    low: float | None = None
    high: float | None = None
    """A group's smallest and largest finite grad/weight (None for a single layer)."""


@dataclass(frozen=True)
class FlowChart:
    title: str
    bars: tuple[Bar, ...]
    layers: int
    """The number of layers drawn (bars may group several)."""
    thresholds: ChartThresholds


@dataclass(frozen=True)
class TimeProfile:
    title: str
    layer: str
    status: Status
    values: tuple[float, ...]
    """RMS gradient per time step (or per group of steps), far end first."""
    group: int
    """Time steps per point (1 when the sequence has at most MAX_TIME_POINTS steps)."""
    steps: int
    near_end: str
    horizon: int | None
    """Steps back from the near end where the gradient fell below the horizon fraction, or None."""


@dataclass(frozen=True)
class Line:
    label: str
    values: tuple[float | None, ...]
    status: Status = Status.HEALTHY


@dataclass(frozen=True)
class StepChart:
    """A chart over steps: the loss, or per-layer gradient norms (then band_low/band_high hold
    the smallest and largest norm of all layers at each step)."""

    title: str
    x_label: str
    y_label: str
    x: tuple[int, ...]
    lines: tuple[Line, ...]
    log_y: bool
    band_low: tuple[float | None, ...] = ()
    band_high: tuple[float | None, ...] = ()
    hidden_lines: int = 0
    """Layers not drawn as lines (beyond MAX_LINES); they are inside the band."""


@dataclass(frozen=True)
class Charts:
    flow: FlowChart | None
    through_time: tuple[TimeProfile, ...]
    loss: StepChart | None
    step_norms: StepChart | None


def charts_of(report: Report, thresholds: ChartThresholds | None = None) -> Charts:
    """Every chart the report has data for (a chart without data is None or left out)."""
    thresholds = thresholds or thresholds_of(report)
    return Charts(flow_chart(report, thresholds), through_time_profiles(report), loss_chart(report),
                  step_norm_chart(report))


def thresholds_of(report: Report) -> ChartThresholds:
    """The report's own thresholds: its config["thresholds"] (written when set away from the
    defaults), else the defaults."""
    changed = report.config.get("thresholds") or {}
    defaults = ChartThresholds()
    return ChartThresholds(
        float(changed.get("vanish_grad_to_weight", defaults.vanish_grad_to_weight)),
        float(changed.get("explode_grad_to_weight", defaults.explode_grad_to_weight)))


def flow_chart(report: Report, thresholds: ChartThresholds) -> FlowChart | None:
    """Layers with parameters in execution order; None when no layer has any."""
    layers = [layer for layer in sorted(report.layers, key=lambda x: x.index) if layer.params > 0]
    if not layers:
        return None
    size = math.ceil(len(layers) / MAX_BARS)
    bars = tuple(_bar(layers[i:i + size], i) for i in range(0, len(layers), size))
    title = "Gradient flow along depth"
    if size > 1:
        title += f" ({len(layers)} layers, {size} per bar)"
    return FlowChart(title, bars, len(layers), thresholds)


def _bar(group: Sequence[LayerReport], first: int) -> Bar:
    status = min((layer.status for layer in group), key=lambda s: STATUS_RANK.get(s, len(STATUS_RANK)))
    if len(group) == 1:
        layer = group[0]
        return Bar(layer.name, first, 1, status, layer.grad_norm, layer.grad_to_weight)
    ratios = sorted((r, i) for i, r in enumerate(layer.grad_to_weight for layer in group) if _finite(r))
    median = group[ratios[(len(ratios) - 1) // 2][1]] if ratios else group[0]
    label = f"{group[0].name} … {group[-1].name}"
    return Bar(label, first, len(group), status, median.grad_norm, median.grad_to_weight,
               ratios[0][0] if ratios else None, ratios[-1][0] if ratios else None)


def through_time_profiles(report: Report) -> tuple[TimeProfile, ...]:
    """One per recurrent layer with a measured profile (a chart needs a point to draw)."""
    profiles = []
    for layer in report.layers:
        tt = layer.through_time
        if tt is None or not tt.step_grad_rms:
            continue
        size = math.ceil(len(tt.step_grad_rms) / MAX_TIME_POINTS)
        values = tuple(_mean(tt.step_grad_rms[i:i + size]) for i in range(0, len(tt.step_grad_rms), size))
        title = f"Gradient through time: {layer.name} ({layer.type}, {len(tt.step_grad_rms)} steps)"
        profiles.append(TimeProfile(title, layer.name, layer.status, values, size, len(tt.step_grad_rms),
                                    tt.near_end, tt.horizon))
    return tuple(profiles)


def loss_chart(report: Report) -> StepChart | None:
    """A watch's loss over its sampled steps; a scan with --steps: every loss it measured, in order
    (each probe batch's, then the loss after each step on that batch: `loss.values`, which also
    holds the last batch's loss that the series leaves out). None for a scan without --steps, and
    for a watch stopped before its first step (a chart needs a point to draw)."""
    scan_steps = is_scan_steps(report)
    if report.series is not None and not scan_steps:
        if not report.series.steps:
            return None
        return StepChart("Loss over training steps", "optimizer step", "loss", report.series.steps,
                         (Line("loss", report.series.loss),), log_y=False)
    if not scan_steps or len(report.loss.values) < 2:
        return None
    x = tuple(range(len(report.loss.values)))
    return StepChart("Loss over the probe batches and --steps", "measurement (probe batch or step, in order)",
                     "loss", x, (Line("loss", report.loss.values),), log_y=False)


def step_norm_chart(report: Report) -> StepChart | None:
    """Per-layer gradient norms over a watch's sampled steps, or over a scan's --steps (log scale)."""
    series = report.series
    if series is None or not series.layers or not series.steps:
        return None
    status = {layer.name: layer.status for layer in report.layers}
    flagged = {f.layer for f in report.findings if f.layer is not None}
    order = sorted(series.layers, key=lambda s: (s.name not in flagged,
                                                STATUS_RANK.get(status.get(s.name, Status.HEALTHY), 9)))
    lines = tuple(Line(s.name, s.grad_norm, status.get(s.name, Status.HEALTHY)) for s in order[:MAX_LINES])
    columns = list(zip(*(s.grad_norm for s in series.layers)))
    low = tuple(min((v for v in col if _finite(v)), default=None) for col in columns)
    high = tuple(max((v for v in col if _finite(v)), default=None) for col in columns)
    title, x_label = (("Per-layer gradient norm over the scan's --steps", "optimizer step (across probe batches)")
                      if is_scan_steps(report) else
                      ("Per-layer gradient norm over training steps", "optimizer step"))
    return StepChart(title, x_label, "gradient L2 norm", series.steps, lines, log_y=True, band_low=low,
                     band_high=high, hidden_lines=max(0, len(series.layers) - MAX_LINES))


def is_scan_steps(report: Report) -> bool:
    """A scan that took optimizer steps (--steps), as opposed to a training watch: its series is
    its own steps (analyse/pipeline.step_series)."""
    return bool(report.config.get("steps")) and report.config.get("mode") != "watch"


def log10(value: float | None) -> float | None:
    """log10 of a positive finite value; None for anything a log axis cannot place."""
    return math.log10(value) if _finite(value) and value > 0 else None  # type: ignore[operator,arg-type]


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def nonfinite(value: float | None) -> bool:
    return value is not None and not math.isfinite(value)


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")
