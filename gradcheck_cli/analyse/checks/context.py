"""What every check sees: the statistics, the per-layer verdicts and the probe-wide facts."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from gradcheck_cli.analyse.checks.parts import collapse_run, layer_numbers, margin_of, stack_run
from gradcheck_cli.analyse.classify import LayerVerdict
from gradcheck_cli.analyse.depth import Collapse, Trend, collapse_of, find_collapses, find_trends, trend_of
from gradcheck_cli.analyse.stats import LayerStats
from gradcheck_cli.analyse.thresholds import DEFAULTS, Thresholds
from gradcheck_cli.config import ScanConfig
from gradcheck_cli.measure.records import Measurements
from gradcheck_cli.report.evidence import CollapseRun, StackRun, StatusEvidence
from gradcheck_cli.report.records import Finding, FindingKind, Number, Severity, Status


@dataclass(frozen=True)
class CheckContext:
    layers: list[LayerStats]
    verdicts: list[LayerVerdict]
    thresholds: Thresholds
    measurements: Measurements
    """The whole-model facts as measured: the losses, NaN/Inf input, where the first NaN/Inf
    appeared, the --steps rounds and updates, the residual modules (measure/records.py)."""
    config: ScanConfig = ScanConfig()
    """The options the measurements were taken under (--steps, --optimizer, --lr)."""

    @cached_property
    def trends(self) -> list[Trend]:
        """Geometric decay/growth runs of the gradient and activation scale (depth.py)."""
        return find_trends(self.layers, self.thresholds)

    def structure_run(self, layer: str, direction: str | None) -> StackRun | None:
        """The geometric run through `layer` as stack_* evidence (None when there is none)."""
        trend = trend_of(layer, self.trends, direction)
        return stack_run(trend, self.measurements.residual_modules) if trend is not None else None

    @cached_property
    def collapses(self) -> list[Collapse]:
        """Plain segments whose activation and output-gradient scales both collapse (depth.py)."""
        return find_collapses(self.layers, self.thresholds)

    def collapse_run(self, layer: str) -> CollapseRun | None:
        """The collapse through `layer` as collapse_* evidence (None when there is none)."""
        collapse = collapse_of(layer, self.collapses)
        return collapse_run(collapse) if collapse is not None else None

    def layers_with(self, status: Status) -> list[tuple[LayerStats, LayerVerdict]]:
        return [(layer, v) for layer, v in zip(self.layers, self.verdicts) if v.status == status]


def margin_evidence(measured: float | None, threshold: float | None,
                    borderline: float = DEFAULTS.borderline) -> dict[str, Number]:
    """{"margin": factor} when the call is borderline (parts.margin_of), else {}."""
    margin = margin_of(measured, threshold, borderline)
    return margin.as_dict() if margin is not None else {}


def activation_counts(layer: LayerStats) -> tuple[str, str, int, int]:
    """The activation after `layer`: its function, module, units and outputs per unit."""
    act = layer.activation
    return (str(act.get("function")), str(act.get("activation_module")), int(act.get("units", 0)),
            int(act.get("outputs_per_unit", 0)))


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
                    StatusEvidence(layer_numbers(layer), context.structure_run(layer.name, direction),
                                   context.collapse_run(layer.name),
                                   margin_of(verdict.measured, verdict.threshold, context.thresholds.borderline)))
            for layer, verdict in context.layers_with(status) if not verdict.through_time]
