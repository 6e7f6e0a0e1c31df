"""analyse(measurements, config, thresholds) -> Report: the whole analysis, pure (no torch).

Measurements -> per-layer statistics (stats.py) -> per-layer status (classify.py) -> findings
(checks/) -> ranked recommendations (fixes.py) -> the Report. The scan (api.py) calls it on the
measurements of its probe batches; anything else that measured a model the same way (a training
watch, merged ranks) can call it on its own measurements. A scan with --steps also gets the series
of its optimizer steps (Report.series, in the watch's schema: report/series.py).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from gradcheck_cli import __version__
from gradcheck_cli.analyse.checks import CheckContext, run_checks
from gradcheck_cli.analyse.classify import LayerVerdict, classify_layers, verdict
from gradcheck_cli.analyse.fixes import recommend
from gradcheck_cli.analyse.recurrence import effective_horizon, near_end, oriented_steps
from gradcheck_cli.analyse.series_sampler import norm_of
from gradcheck_cli.analyse.stats import LayerStats, compute_stats
from gradcheck_cli.analyse.structure import has_normalization
from gradcheck_cli.analyse.thresholds import DEFAULTS, Thresholds
from gradcheck_cli.config import ScanConfig
from gradcheck_cli.measure.records import Measurements
from gradcheck_cli.report.records import FindingKind, LayerReport, LossInfo, Report, Status, ThroughTime
from gradcheck_cli.report.series import LayerSeries, WatchSeries

NONFINITE_KINDS = (FindingKind.NONFINITE, FindingKind.NONFINITE_INPUT)
"""Findings that make the model's verdict nonfinite even when every gradient is finite."""


def analyse(measurements: Measurements, config: ScanConfig, thresholds: Thresholds | None = None,
            target: str = "") -> Report:
    """The Report of `measurements` taken under `config`; `target` names what was measured."""
    thresholds = thresholds or Thresholds()
    layers = compute_stats(measurements.layers, thresholds)
    verdicts = classify_layers(layers, thresholds)
    context = CheckContext(layers, verdicts, thresholds, measurements, config)
    findings = run_checks(context)
    model_verdict = verdict([v.status for v in verdicts])
    if model_verdict != Status.NONFINITE and any(f.kind in NONFINITE_KINDS for f in findings):
        model_verdict = Status.NONFINITE  # a NaN loss or NaN input with finite gradients
    return Report(
        target=target,
        tool_version=__version__,
        config=report_config(config.as_dict(), thresholds),
        loss=LossInfo(measurements.loss_kind, measurements.loss_trace),
        verdict=model_verdict,
        layers=tuple(_report_row(layer, v, thresholds) for layer, v in zip(layers, verdicts)),
        findings=tuple(findings),
        recommendations=tuple(recommend(findings, layers, has_normalization(measurements.module_types), thresholds)),
        series=step_series(measurements, [layer.name for layer in layers]),
    )


def report_config(config: dict[str, Any], thresholds: Thresholds) -> dict[str, Any]:
    """The report's config: the scan's settings, and under "thresholds" the thresholds set away
    from their defaults (absent when there are none), so a report says what decided it and its
    charts draw the lines it was judged by."""
    changed = {f.name: getattr(thresholds, f.name) for f in fields(Thresholds)
               if getattr(thresholds, f.name) != getattr(DEFAULTS, f.name)}
    return {**config, "thresholds": changed} if changed else config


def _report_row(layer: LayerStats, layer_verdict: LayerVerdict, thresholds: Thresholds) -> LayerReport:
    """The layer's row of the public report (schema gradcheck/report@1): the subset of its
    statistics that the report promises, and its status. The analysis itself reads `layer`."""
    return LayerReport(
        name=layer.name, type=layer.type_name, index=layer.index, params=layer.params,
        status=layer_verdict.status, grad_norm=layer.grad_norm, weight_norm=layer.weight_norm,
        grad_to_weight=layer.grad_to_weight, nonfinite_grads=layer.nonfinite_grads,
        activation=layer.activation, update_to_weight=layer.update_to_weight,
        through_time=_through_time(layer, thresholds))


def _through_time(layer: LayerStats, thresholds: Thresholds) -> ThroughTime | None:
    """The per-step profile of a recurrent layer, as the through-time rules read it."""
    if len(layer.step_grad_rms) < 2:
        return None
    steps = oriented_steps(layer.step_grad_rms, layer.step_entry_grad_rms, layer.bidirectional)
    return ThroughTime(steps, near_end(layer.step_entry_grad_rms, layer.bidirectional),
                       effective_horizon(steps, thresholds.horizon_fraction))


def step_series(measurements: Measurements, order: list[str]) -> WatchSeries | None:
    """The optimizer steps of a scan with --steps as the report's series (None: no step taken).

    Point i is the i-th step the probe took (numbered from 0 across the probe batches): `loss` is
    the loss whose gradients that step used, as the watch's is the loss given to w.step: for the
    first step after a probe batch that batch's loss, for a later one the loss on the same batch
    after the step before it. These are exactly the loss trace's entries (Report.loss.values) but
    those of the probe batches no step followed: the last one, and any whose gradients were NaN/Inf
    (measure/probe.py takes no step with them). `grad_norm` is the norm of the gradient the step
    used (clipped under config.clip_grad_norm, as the step used it: only verify's clip-gradients
    sets that), `update_to_weight` its |Δw| / |w|, `weight_norm` the norm of the layer's trainable
    weights after it. The layers owning a trainable parameter, in `order`.
    """
    points = measurements.step_points
    if not points:
        return None
    column = {name: k for k, name in enumerate(measurements.step_layers)}
    kept = [(name, column[name]) for name in order if name in column]
    layers = tuple(LayerSeries(name,
                               tuple(_norm(p.grad_sq[k]) for p in points),
                               tuple(p.update_ratio[k] for p in points),
                               tuple(norm_of(p.weight_sq[k]) for p in points))
                   for name, k in kept)
    return WatchSeries(tuple(range(len(points))), tuple(p.loss for p in points), layers)


def _norm(square: float | None) -> float | None:
    """A norm from its square (series_sampler.norm_of, as the watch's series); None: no gradient."""
    return None if square is None else norm_of(square)
