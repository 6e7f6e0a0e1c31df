"""report/charts.py: the charts of a report as data, which the HTML page and `gradcheck plot`
both draw. The numbers must be the report's; large models must stay a bounded picture."""

from __future__ import annotations

from dataclasses import replace

from gradcheck_cli.report.charts import (
    MAX_BARS,
    MAX_LINES,
    MAX_TIME_POINTS,
    ChartThresholds,
    charts_of,
    thresholds_of,
)
from gradcheck_cli.report.records import (
    Finding,
    FindingKind,
    LayerReport,
    LossInfo,
    Report,
    Severity,
    Status,
    ThroughTime,
)
from gradcheck_cli.report.series import LayerSeries, WatchSeries

SCAN = {"batches": 3, "batch_size": 16, "seed": 0, "device": "cpu", "steps": 0}


def _layer(index: int, ratio: float | None, status: Status = Status.HEALTHY, params: int = 10,
           through_time: ThroughTime | None = None) -> LayerReport:
    grad = None if ratio is None else ratio * 2.0
    return LayerReport(f"l{index}", "Linear", index, params, status, grad, 2.0, ratio, 0,
                       through_time=through_time)


def _report(layers: list[LayerReport], config: dict[str, object] | None = None,
            series: WatchSeries | None = None, findings: tuple[Finding, ...] = (),
            losses: tuple[float, ...] = (1.0, 0.9, 0.8)) -> Report:
    return Report("t", "0.1.0", config or SCAN, LossInfo("mse", losses), Status.HEALTHY, tuple(layers),
                  findings, (), series=series)


def test_one_bar_per_layer_with_parameters_in_execution_order() -> None:
    layers = [_layer(2, 0.1), _layer(0, 1e-9, Status.VANISHING), _layer(1, None, params=0)]
    flow = charts_of(_report(layers)).flow
    assert flow is not None and flow.layers == 2
    assert [(b.label, b.count, b.status, b.grad_to_weight) for b in flow.bars] == [
        ("l0", 1, Status.VANISHING, 1e-9), ("l2", 1, Status.HEALTHY, 0.1)]


def test_a_thousand_layers_group_into_bounded_bars_of_real_values() -> None:
    layers = [_layer(i, 10.0 ** (-(i % 7)), Status.EXPLODING if i == 503 else Status.HEALTHY)
              for i in range(1000)]
    flow = charts_of(_report(layers)).flow
    assert flow is not None and len(flow.bars) <= MAX_BARS
    assert sum(b.count for b in flow.bars) == 1000
    ratios = {layer.grad_to_weight for layer in layers}
    for bar in flow.bars:
        group = layers[bar.first:bar.first + bar.count]
        assert bar.grad_to_weight in ratios  # a member's value, never an average
        assert bar.low == min(x.grad_to_weight for x in group)  # type: ignore[type-var]
        assert bar.high == max(x.grad_to_weight for x in group)  # type: ignore[type-var]
    worst = next(b for b in flow.bars if b.first <= 503 < b.first + b.count)
    assert worst.status is Status.EXPLODING
    assert sum(b.status is Status.EXPLODING for b in flow.bars) == 1


def test_thresholds_come_from_the_reports_config() -> None:
    assert thresholds_of(_report([_layer(0, 1.0)])) == ChartThresholds(1e-7, 1e3)
    changed = _report([_layer(0, 1.0)], {**SCAN, "thresholds": {"explode_grad_to_weight": 50.0}})
    assert thresholds_of(changed) == ChartThresholds(1e-7, 50.0)


def test_a_recurrent_profile_is_drawn_as_measured_and_long_ones_are_grouped() -> None:
    short = ThroughTime((1e-9, 1e-5, 1e-2), "last", 2)
    long = ThroughTime(tuple(float(i + 1) for i in range(1000)), "first", None)
    profiles = charts_of(_report([_layer(0, 1.0, through_time=short), _layer(1, 1.0, through_time=long)])
                         ).through_time
    assert [(p.layer, p.values, p.horizon, p.near_end) for p in profiles[:1]] == [("l0", short.step_grad_rms, 2,
                                                                                   "last")]
    grouped = profiles[1]
    assert len(grouped.values) <= MAX_TIME_POINTS and grouped.group == 5 and grouped.steps == 1000
    assert grouped.values[0] == (1 + 2 + 3 + 4 + 5) / 5


def _series(names: list[str], steps: int) -> WatchSeries:
    layers = tuple(LayerSeries(n, tuple(float(i + 1) * (k + 1) for k in range(steps)), (None,) * steps,
                               (None,) * steps) for i, n in enumerate(names))
    return WatchSeries(tuple(range(steps)), tuple(1.0 / (k + 1) for k in range(steps)), layers)


def test_a_watch_has_loss_and_step_norms_with_flagged_layers_first() -> None:
    names = [f"l{i}" for i in range(12)]
    finding = Finding(FindingKind.GRAD_SPIKE, "l11", Severity.WARNING, "spike", {}, step=2, rank=0)
    report = _report([_layer(i, 1.0) for i in range(12)], {"mode": "watch", "steps": 4},
                     _series(names, 4), (finding,))
    charts = charts_of(report)
    assert charts.loss is not None and charts.loss.lines[0].values == (1.0, 0.5, 1 / 3, 0.25)
    norms = charts.step_norms
    assert norms is not None and len(norms.lines) == MAX_LINES and norms.hidden_lines == 12 - MAX_LINES
    assert norms.lines[0].label == "l11"
    assert norms.band_low == (1.0, 2.0, 3.0, 4.0) and norms.band_high == (12.0, 24.0, 36.0, 48.0)


def test_a_scan_with_steps_charts_every_loss_it_measured() -> None:
    report = _report([_layer(0, 1.0)], {**SCAN, "steps": 2}, _series(["l0"], 4), losses=(3.0, 2.0, 1.0, 2.5, 2.0))
    charts = charts_of(report)
    assert charts.loss is not None and charts.loss.lines[0].values == (3.0, 2.0, 1.0, 2.5, 2.0)
    assert charts.step_norms is not None and "--steps" in charts.step_norms.title


def test_a_scan_without_steps_has_no_chart_over_steps() -> None:
    charts = charts_of(_report([_layer(0, 1.0)]))
    assert charts.loss is None and charts.step_norms is None and charts.through_time == ()
    assert charts_of(replace(_report([_layer(0, 1.0, params=0)]))).flow is None


def test_the_charts_default_thresholds_are_the_analysis_defaults() -> None:
    """report/ may not import analyse/: a saved report with default thresholds has no
    config["thresholds"], so the charts' defaults must be the analysis's own."""
    from gradcheck_cli.analyse.thresholds import DEFAULTS

    assert ChartThresholds() == ChartThresholds(DEFAULTS.vanish_grad_to_weight, DEFAULTS.explode_grad_to_weight)
