"""What every check sees: the statistics, the per-layer verdicts and the probe-wide facts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

from gradcheck_cli.analyse.classify import LayerVerdict
from gradcheck_cli.analyse.depth import (
    Collapse,
    Trend,
    collapse_evidence,
    collapse_of,
    find_collapses,
    find_trends,
    trend_evidence,
    trend_of,
)
from gradcheck_cli.analyse.stats import LayerStats
from gradcheck_cli.analyse.thresholds import Thresholds
from gradcheck_cli.measure.records import NonfiniteOrigin
from gradcheck_cli.report.records import Finding, FindingKind, Number, Severity, Status


@dataclass(frozen=True)
class CheckContext:
    layers: list[LayerStats]
    verdicts: list[LayerVerdict]
    thresholds: Thresholds
    losses: tuple[float, ...]
    nonfinite_input: bool
    first_nonfinite_module: str | None
    nonfinite_origin: NonfiniteOrigin | None = None
    """Where the first NaN/Inf appeared (op, module, direction, input magnitude), from the replay."""
    loss_trace: tuple[float, ...] = ()
    """Every loss in the order computed, optimizer steps included (--steps)."""
    steps: int = 0
    optimizer: str = "sgd"
    lr: float = 0.0
    first_grad_norm: float | None = None
    """Total gradient norm on the first probe batch, before any optimizer step."""
    first_step_update: tuple[str, float] | None = None
    """The layer the first optimizer step changed most, and its update/weight ratio."""
    step_rounds: tuple[tuple[float, ...], ...] = ()
    """Per batch the steps were taken on: its loss before the steps and after each (probe.py)."""
    step_updates: tuple[tuple[str, float], ...] = ()
    """Per optimizer step, in order: the layer it changed most and that update/weight ratio."""
    residual_modules: tuple[str, ...] = ()
    """Modules whose input the probe saw added to their result (a residual path, depth.py)."""

    @cached_property
    def trends(self) -> list[Trend]:
        """Geometric decay/growth runs of the gradient and activation scale (depth.py)."""
        return find_trends(self.layers)

    def structure_evidence(self, layer: str, direction: str | None) -> dict[str, Number]:
        """The geometric run through `layer` as stack_* evidence ({} when there is none)."""
        trend = trend_of(layer, self.trends, direction)
        return trend_evidence(trend, self.residual_modules) if trend is not None else {}

    @cached_property
    def collapses(self) -> list[Collapse]:
        """Plain segments whose activation and output-gradient scales both collapse (depth.py)."""
        return find_collapses(self.layers, self.thresholds.collapse)

    def collapse_evidence(self, layer: str) -> dict[str, Number]:
        """The collapse through `layer` as collapse_* evidence ({} when there is none)."""
        collapse = collapse_of(layer, self.collapses)
        return collapse_evidence(collapse) if collapse is not None else {}

    def layers_with(self, status: Status) -> list[tuple[LayerStats, LayerVerdict]]:
        return [(layer, v) for layer, v in zip(self.layers, self.verdicts) if v.status == status]


def layer_evidence(layer: LayerStats) -> dict[str, Number]:
    """The numbers every per-layer finding carries."""
    evidence: dict[str, Number] = {
        "grad_norm": layer.grad_norm,
        "weight_norm": layer.weight_norm,
        "grad_to_weight": layer.grad_to_weight,
        "grad_rms": layer.grad_rms,
    }
    if layer.output_grad_rms is not None:
        evidence["output_grad_rms"] = layer.output_grad_rms
    if layer.output_rms is not None:
        evidence["activation_rms"] = layer.output_rms
    if layer.step_grad_rms:
        finite = [s for s in layer.step_grad_rms if math.isfinite(s)]
        evidence["first_step_grad_rms"] = layer.step_grad_rms[0]
        evidence["last_step_grad_rms"] = layer.step_grad_rms[-1]
        if finite:
            evidence["peak_step_grad_rms"] = max(finite)
    return evidence


BORDERLINE = 2.0
"""A number within this factor of its threshold is a borderline call (the finding's `margin`)."""


def margin_evidence(measured: float | None, threshold: float | None) -> dict[str, Number]:
    """{"margin": how many times past its threshold the deciding number lies} when that factor is
    below BORDERLINE, else {}: one place for every threshold finding to say it is borderline, so
    that a user can tell a call that another batch could flip from a clear one."""
    if measured is None or threshold is None or not measured > 0 or not threshold > 0:
        return {}
    factor = max(measured / threshold, threshold / measured)
    return {"margin": factor} if math.isfinite(factor) and factor < BORDERLINE else {}


def activation_evidence(layer: LayerStats, **measured: Number) -> dict[str, Number]:
    """The evidence of a dead-relu or saturated-activation finding: the activation, the
    `measured` shares, its units, and the feeding layer's activation RMS."""
    act = layer.activation
    evidence: dict[str, Number] = {
        "function": str(act.get("function")), "activation_module": str(act.get("activation_module")),
        **measured, "units": int(act.get("units", 0)), "outputs_per_unit": int(act.get("outputs_per_unit", 0)),
    }
    if layer.output_rms is not None:
        evidence["activation_rms"] = layer.output_rms
    return evidence


def status_findings(context: CheckContext, status: Status, kind: FindingKind, severity: Severity,
                    phrase: str) -> list[Finding]:
    """One finding per layer classified `status`, its message the rule that fired.

    Layers whose status comes from the gradient through time are left to checks/through_time.py,
    which reports them as vanishing-through-time / exploding-through-time instead. A geometric
    decay (vanishing) or growth (exploding) through the layer's stack adds stack_* evidence.
    """
    direction = {Status.VANISHING: "decay", Status.EXPLODING: "growth"}.get(status)
    return [Finding(kind, layer.name, severity,
                    f"{layer.name} ({layer.type_name}) {phrase}: {verdict.reason}",
                    {**layer_evidence(layer), **context.structure_evidence(layer.name, direction),
                     **context.collapse_evidence(layer.name),
                     **margin_evidence(verdict.measured, verdict.threshold)})
            for layer, verdict in context.layers_with(status) if not verdict.through_time]
