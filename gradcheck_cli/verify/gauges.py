"""The number that justified each finding kind, and which way is healthier (docs/verify.md).

A finding is raised on one measured number (its evidence key): grad/weight for vanishing and
exploding, the far/near ratio through time, the share of dead or saturated units, the weight std
over the variance-preserving one, the NaN/Inf gradient count, the loss trend of the steps. --verify
reads that number before and after a patch: from the finding itself while it remains, else from
the layer's row of the report (the finding is gone, the layer is still measured). `moved_towards`
says whether it moved far enough towards the healthy side to count as an improvement: at least one
decade, or half of its distance (in decades) from the threshold that raised it when that is less.
Pure: no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gradcheck_cli.analyse.thresholds import Thresholds
from gradcheck_cli.report.records import Finding, FindingKind, LayerReport, Number, Report

K = FindingKind


@dataclass(frozen=True)
class Gauge:
    key: str
    """The evidence key (and MetricChange.metric)."""
    label: str
    """How the summary line names it."""
    better: int
    """+1: larger is healthier; -1: smaller is healthier; 0: closer to 1 is healthier (a ratio)."""
    bound: Callable[[Thresholds], float] | None = None
    """The threshold that raised the finding (its healthy side is `better` of it); None: none."""


GAUGES: dict[FindingKind, Gauge] = {
    K.VANISHING: Gauge("grad_to_weight", "grad/weight", +1, lambda t: t.vanish_grad_to_weight),
    K.EXPLODING: Gauge("grad_to_weight", "grad/weight", -1, lambda t: t.explode_grad_to_weight),
    K.NONFINITE: Gauge("nonfinite_grads", "NaN/Inf gradients", -1),
    K.VANISHING_THROUGH_TIME: Gauge("far_over_near", "far/near step gradient", +1, lambda t: t.vanish_relative),
    K.EXPLODING_THROUGH_TIME: Gauge("far_over_near", "far/near step gradient", -1, lambda t: t.explode_relative),
    K.SATURATED_ACTIVATION: Gauge("saturated_units", "saturated units", -1, lambda t: t.saturated_majority),
    K.DEAD_RELU: Gauge("dead_fraction", "dead units", -1, lambda t: t.dead_majority),
    K.INIT_SCALE: Gauge("std_ratio", "weight std/target", 0, lambda t: t.init_band_margin),
    K.DIVERGENCE: Gauge("loss_trend", "loss last/first", -1, lambda t: t.divergence_growth),
    K.FP16_UNDERFLOW: Gauge("below_normal_fraction", "gradients below fp16's normal range", -1),
    K.BF16_STALE_UPDATE: Gauge("stale_fraction", "stale bf16 updates", -1),
}
"""Finding kinds without a gauge (nonfinite-input, fp16-overflow) are judged on presence alone."""


def finding_value(finding: Finding) -> Number:
    """The finding's justifying number (None for a kind without a gauge)."""
    gauge = GAUGES.get(finding.kind)
    if gauge is None:
        return None
    if gauge.key == "loss_trend":
        return loss_trend(finding.evidence.get("first_loss"), finding.evidence.get("last_loss"))
    return finding.evidence.get(gauge.key)


def row_value(kind: FindingKind, layer: LayerReport | None, report: Report) -> Number:
    """The same number read from the report when the finding is gone: the layer's row, or (for the
    loss trend) the report's loss values; None when the report does not carry it."""
    gauge = GAUGES.get(kind)
    if gauge is None:
        return None
    if gauge.key == "loss_trend":
        values = report.loss.values
        return loss_trend(values[0], values[-1]) if len(values) > 1 else None
    if layer is None:
        return None
    if gauge.key in ("grad_to_weight", "nonfinite_grads"):
        return getattr(layer, gauge.key)  # type: ignore[no-any-return]
    return layer.activation.get(gauge.key)


def loss_trend(first: Number, last: Number) -> float | None:
    if not isinstance(first, (int, float)) or not isinstance(last, (int, float)):
        return None
    if not math.isfinite(last) or not math.isfinite(first):
        return math.inf
    return last / first if first > 0 else None


def improvement(gauge: Gauge, before: Number, after: Number) -> float | None:
    """Decades moved towards healthy (negative: away); inf when a non-finite number became finite;
    None when either side is not a number to compare."""
    if not isinstance(before, (int, float)) or not isinstance(after, (int, float)):
        return None
    if not math.isfinite(before) or not math.isfinite(after):
        if math.isfinite(after):
            return math.inf
        return -math.inf if math.isfinite(before) else None
    if gauge.better == 0:
        before, after = abs(_log(before)), abs(_log(after))
        return before - after
    if before <= 0 or after <= 0:  # a count or share that reached 0, or left it
        if before == after:
            return 0.0
        healthier = after < before if gauge.better < 0 else after > before
        return math.inf if healthier else -math.inf
    return gauge.better * (math.log10(after) - math.log10(before))


def moved_towards(gauge: Gauge, before: Number, after: Number, thresholds: Thresholds) -> bool:
    """Moved at least a decade towards healthy, or half of the decades between `before` and the
    threshold that raised the finding when that distance is less than two decades."""
    moved = improvement(gauge, before, after)
    if moved is None or moved <= 0:
        return False
    needed = 1.0
    if gauge.bound is not None and isinstance(before, (int, float)) and math.isfinite(before) and before > 0:
        bound = gauge.bound(thresholds)
        distance = abs(_log(before) if gauge.better == 0 else math.log10(before) - math.log10(bound))
        if gauge.better == 0:
            distance = max(distance - math.log10(bound), 0.0)
        if distance > 0:
            needed = min(needed, distance / 2)
    return moved >= needed


def _log(value: float) -> float:
    return math.log10(value) if value > 0 else -math.inf


def evidence_of(findings: tuple[Finding, ...]) -> Mapping[str, Finding]:
    """The findings by "kind@layer" ("kind" for a model finding)."""
    return {key(f.kind.value, f.layer): f for f in findings}


def key(kind: str, layer: str | None) -> str:
    return f"{kind}@{layer}" if layer else kind
