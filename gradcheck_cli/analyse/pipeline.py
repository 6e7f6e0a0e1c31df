"""analyse(measurements, config, thresholds) -> Report: the whole analysis, pure (no torch).

Measurements -> per-layer statistics (stats.py) -> per-layer status (classify.py) -> findings
(checks/) -> ranked recommendations (fixes.py) -> the Report. The scan (api.py) calls it on the
measurements of its probe batches; anything else that measured a model the same way (a training
watch, merged ranks) can call it on its own measurements.
"""

from __future__ import annotations

from gradcheck_cli import __version__
from gradcheck_cli.analyse.checks import CheckContext, run_checks
from gradcheck_cli.analyse.classify import classify_layers, verdict
from gradcheck_cli.analyse.fixes import recommend
from gradcheck_cli.analyse.stats import compute_stats
from gradcheck_cli.analyse.structure import has_normalization
from gradcheck_cli.analyse.thresholds import Thresholds
from gradcheck_cli.config import ScanConfig
from gradcheck_cli.measure.records import Measurements
from gradcheck_cli.report.records import LayerReport, LossInfo, Report, Status


def analyse(measurements: Measurements, config: ScanConfig, thresholds: Thresholds | None = None,
            target: str = "") -> Report:
    """The Report of `measurements` taken under `config`; `target` names what was measured."""
    thresholds = thresholds or Thresholds()
    layers = compute_stats(measurements.layers, thresholds)
    verdicts = classify_layers(layers, thresholds)
    context = CheckContext(layers, verdicts, thresholds, measurements.losses, measurements.nonfinite_input,
                           nonfinite_origin=measurements.nonfinite_origin,
                           loss_trace=measurements.loss_trace, steps=config.steps, optimizer=config.optimizer,
                           lr=config.lr, first_grad_norm=measurements.first_grad_norm,
                           first_step_update=measurements.first_step_update,
                           step_rounds=measurements.step_rounds, step_updates=measurements.step_updates,
                           residual_modules=measurements.residual_modules)
    findings = run_checks(context)
    model_verdict = verdict([v.status for v in verdicts])
    if model_verdict != Status.NONFINITE and any(f.kind.value.startswith("nonfinite") for f in findings):
        model_verdict = Status.NONFINITE  # a NaN loss or NaN input with finite gradients
    return Report(
        target=target,
        tool_version=__version__,
        config=config.as_dict(),
        loss=LossInfo(measurements.loss_kind, measurements.loss_trace),
        verdict=model_verdict,
        layers=tuple(
            LayerReport(
                name=s.name, type=s.type_name, index=s.index, params=s.params, status=v.status,
                grad_norm=s.grad_norm, weight_norm=s.weight_norm, grad_to_weight=s.grad_to_weight,
                nonfinite_grads=s.nonfinite_grads, activation=s.activation,
                update_to_weight=s.update_to_weight)
            for s, v in zip(layers, verdicts)),
        findings=tuple(findings),
        recommendations=tuple(recommend(findings, layers, has_normalization(measurements.module_types), thresholds)),
    )
