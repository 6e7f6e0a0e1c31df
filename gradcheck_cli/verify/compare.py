"""Before -> after of one recommendation: which findings it answers, and its status (docs/verify.md).

A recommendation answers the findings of the kinds its fix addresses (ANSWERS, as analyse/fixes.py
proposes them) on its own layers, plus the model-level findings of those kinds. Findings are matched
before -> after by "kind@layer", with the layer names a patch changed mapped (Patch.renamed); a
layer a patch added (a norm) is a new layer, and its findings are new findings.

* verified: every answered finding is gone, no new error or warning, the verdict is not worse;
* partial: some answered finding is gone, or its justifying number (gauges.py) moved a decade (or
  half its distance to the threshold) towards healthy, with no new error;
* made worse: the verdict is worse, or a new error appeared;
* no effect: anything else.

clip-gradients, lower-lr and weight-decay change the optimizer steps, not the gradient the probe
measures: an exploding finding stays whatever the step does. They answer divergence and NaN/Inf
only, and are judged on what they change: the largest update/weight ratio of the steps (healthy at
or below UPDATE_RATIO_LIMIT) and the loss trend. Pure: no torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gradcheck_cli.analyse.thresholds import Thresholds
from gradcheck_cli.report.records import (
    VERDICT_ORDER,
    Finding,
    FindingKind,
    Recommendation,
    RecommendationId,
    Report,
    Severity,
)
from gradcheck_cli.report.verification import MetricChange, Verification, VerificationStatus
from gradcheck_cli.verify.gauges import GAUGES, Gauge, finding_value, improvement, key, moved_towards, row_value

K, R, S = FindingKind, RecommendationId, VerificationStatus

ANSWERS: dict[RecommendationId, tuple[FindingKind, ...]] = {
    R.HE_INIT: (K.VANISHING, K.EXPLODING, K.INIT_SCALE, K.DEAD_RELU, K.NONFINITE),
    R.XAVIER_INIT: (K.VANISHING, K.EXPLODING, K.INIT_SCALE, K.SATURATED_ACTIVATION, K.NONFINITE),
    R.SWAP_ACTIVATION: (K.VANISHING, K.SATURATED_ACTIVATION, K.DEAD_RELU),
    R.ADD_NORMALIZATION: (K.VANISHING, K.EXPLODING, K.INIT_SCALE),
    R.ADD_SKIP: (K.VANISHING, K.EXPLODING, K.INIT_SCALE),
    R.GATED_RNN: (K.VANISHING_THROUGH_TIME, K.EXPLODING_THROUGH_TIME),
    R.CLIP_GRADIENTS: (K.DIVERGENCE, K.NONFINITE),
    R.LOWER_LR: (K.DIVERGENCE, K.NONFINITE),
    R.WEIGHT_DECAY: (K.DIVERGENCE,),
    R.GUARD_NONFINITE: (K.NONFINITE,),
    R.CHECK_INPUTS: (K.NONFINITE_INPUT,),
    R.LOSS_SCALING: (K.FP16_UNDERFLOW, K.FP16_OVERFLOW),
    R.USE_BF16: (K.FP16_OVERFLOW,),
    R.KEEP_FP32: (K.FP16_OVERFLOW,),
    R.FP32_MASTER_WEIGHTS: (K.BF16_STALE_UPDATE,),
}
"""The finding kinds each recommendation's fix addresses (analyse/cause_fixes.py, fix_gradients.py,
fix_nonfinite.py, fix_precision.py propose each id for these kinds)."""

STEP_FIXES = (R.CLIP_GRADIENTS, R.LOWER_LR, R.WEIGHT_DECAY)
"""Fixes of the optimizer steps, judged on the steps' update ratios and loss trend."""

UPDATE_RATIO_LIMIT = 0.1
"""The largest healthy update/weight ratio of one step: TheDeepChecker's upper bound on the update
ratio (log10 <= -1), the same source as thresholds.explode_grad_to_weight."""

UPDATE_GAUGE = Gauge("update_to_weight", "largest update/weight", -1, lambda t: UPDATE_RATIO_LIMIT)


@dataclass(frozen=True)
class Effect:
    """A verification and the measured effect it is ranked by (rank.py)."""

    verification: Verification
    resolved: int = 0
    """Answered findings gone."""
    verdict_gain: int = 0
    """Places the verdict moved towards healthy in VERDICT_ORDER (negative: worse)."""
    move: float = 0.0
    """Decades the justifying numbers moved towards healthy, summed (each capped at 10)."""


def answered(rec: Recommendation, findings: Sequence[Finding]) -> list[Finding]:
    """The findings `rec` answers: of its kinds, on its layers or the whole model."""
    kinds = ANSWERS.get(rec.id, ())
    return [f for f in findings if f.kind in kinds and (f.layer is None or not rec.layers or f.layer in rec.layers)]


def verdict_gain(before: str, after: str) -> int:
    order = [status.value for status in VERDICT_ORDER]
    return order.index(after) - order.index(before)


def not_applicable(rec: Recommendation, before: Report, reason: str) -> Effect:
    return Effect(Verification(S.NOT_APPLICABLE, reason, before.verdict.value, None))


def compare(rec: Recommendation, before: Report, after: Report, renamed: Mapping[str, str],
            thresholds: Thresholds, scanned: Report | None = None) -> Effect:
    """The verification of `rec` from the report before its patch and the report after it.
    `scanned`: the scan's own report when `before` is a separate baseline probe (with steps); a
    finding it already reported is no new problem."""
    targets = answered(rec, before.findings)
    after_keys = {key(f.kind.value, f.layer): f for f in after.findings}
    known = (*before.findings, *(scanned.findings if scanned is not None else ()))
    moved_name = {old: renamed.get(old, old) for old in (f.layer for f in known) if old}
    before_keys = {key(f.kind.value, moved_name.get(f.layer or "", f.layer)) for f in known}
    introduced = [f for k, f in after_keys.items() if k not in before_keys and f.severity != Severity.INFO]
    gone: list[Finding] = []
    remaining: list[Finding] = []
    changes: list[MetricChange] = []
    move = 0.0
    for f in targets:
        now = after_keys.get(key(f.kind.value, moved_name.get(f.layer or "", f.layer)))
        (remaining if now is not None else gone).append(f)
        change, moved = _finding_change(f, now, after, renamed, thresholds)
        if change is not None:
            changes.append(change)
        move += moved
    gain = verdict_gain(before.verdict.value, after.verdict.value)
    steps = _update_changes(before, after) if rec.id in STEP_FIXES else []
    status = _status(rec, targets, gone, introduced, gain, steps, thresholds, move)
    verification = Verification(
        status, summary(before, after, steps + changes, len(targets), gone, introduced),
        before.verdict.value, after.verdict.value,
        (MetricChange("verdict", None, before.verdict.value, after.verdict.value),
         *_status_changes(rec, before, after, renamed), *changes, *steps),
        tuple(_name(f) for f in gone), tuple(_name(f) for f in remaining), tuple(_name(f) for f in introduced),
        batches=int(after.config.get("batches", 0)), steps=int(after.config.get("steps", 0)))
    step_move = sum(_capped(improvement(UPDATE_GAUGE, c.before, c.after)) for c in steps[:1])
    return Effect(verification, len(gone), gain, move + step_move)


def _status(rec: Recommendation, targets: list[Finding], gone: list[Finding], introduced: list[Finding],
            gain: int, steps: list[MetricChange], t: Thresholds, move: float) -> VerificationStatus:
    if gain < 0 or any(f.severity == Severity.ERROR for f in introduced):
        return S.MADE_WORSE
    all_gone = len(gone) == len(targets)
    if rec.id in STEP_FIXES:
        update = steps[0] if steps else None
        was_high = update is not None and _above(update.before, UPDATE_RATIO_LIMIT)
        healthy_now = update is None or not _above(update.after, UPDATE_RATIO_LIMIT)
        if all_gone and healthy_now and (targets or was_high) and not introduced:
            return S.VERIFIED
        if gone or (update is not None and moved_towards(UPDATE_GAUGE, update.before, update.after, t)):
            return S.PARTIAL
        return S.NO_EFFECT
    if targets and all_gone and not introduced:
        return S.VERIFIED
    if gone or move > 0 or (not targets and gain > 0):
        return S.PARTIAL
    return S.NO_EFFECT


def _finding_change(f: Finding, now: Finding | None, after: Report, renamed: Mapping[str, str],
                    thresholds: Thresholds) -> tuple[MetricChange | None, float]:
    """The finding's justifying number before -> after, and the decades it moved when that counts
    as a move towards healthy (else 0)."""
    gauge = GAUGES.get(f.kind)
    if gauge is None:
        return None, 0.0
    before_value = finding_value(f)
    if now is not None:
        after_value = finding_value(now)
    else:
        layer_name = renamed.get(f.layer, f.layer) if f.layer else None
        row = next((x for x in after.layers if x.name == layer_name), None)
        after_value = row_value(f.kind, row, after) if (row is not None or f.layer is None) else None
    moved = _capped(improvement(gauge, before_value, after_value))
    counted = moved if moved_towards(gauge, before_value, after_value, thresholds) else 0.0
    return MetricChange(gauge.key, f.layer, before_value, after_value), counted


def _update_changes(before: Report, after: Report) -> list[MetricChange]:
    """The largest update/weight ratio over the layers and the loss trend, before -> after."""
    changes = [MetricChange("update_to_weight", None, _largest_update(before), _largest_update(after))]
    trend = GAUGES[K.DIVERGENCE]
    changes.append(MetricChange(trend.key, None, row_value(K.DIVERGENCE, None, before),
                                row_value(K.DIVERGENCE, None, after)))
    return changes


def _largest_update(report: Report) -> float | None:
    ratios = [x.update_to_weight for x in report.layers if x.update_to_weight is not None]
    if not ratios:
        return None
    return math.inf if any(not math.isfinite(r) for r in ratios) else max(ratios)


def _status_changes(rec: Recommendation, before: Report, after: Report,
                    renamed: Mapping[str, str]) -> list[MetricChange]:
    after_rows = {x.name: x for x in after.layers}
    changes = []
    for row in before.layers:
        if row.name in rec.layers:
            now = after_rows.get(renamed.get(row.name, row.name))
            changes.append(MetricChange("status", row.name, row.status.value, now.status.value if now else None))
    return changes


def summary(before: Report, after: Report, changes: list[MetricChange], answered_count: int,
            gone: list[Finding], introduced: list[Finding]) -> str:
    """One line: "verdict exploding -> healthy; net.0 grad/weight 3.2e+04 -> 2.1e-03; ..."."""
    b, a = before.verdict.value, after.verdict.value
    parts = [f"verdict {b} -> {a}" if a != b else f"verdict {b} (unchanged)"]
    labels = {g.key: g.label for g in (*GAUGES.values(), UPDATE_GAUGE)}
    for change in changes[:2]:
        where = f"{change.layer} " if change.layer else ""
        over = (f" over {after.config.get('steps')} {after.config.get('optimizer', 'sgd')} steps"
                if change.metric == UPDATE_GAUGE.key else "")
        after_text = "gone" if change.after is None and change.before is not None else number(change.after)
        parts.append(f"{where}{labels.get(change.metric, change.metric)} {number(change.before)} -> "
                     f"{after_text}{over}")
    if answered_count > 1:
        parts.append(f"{len(gone)} of {answered_count} findings resolved")
    if introduced:
        more = f" (+{len(introduced) - 1} more)" if len(introduced) > 1 else ""
        parts.append(f"new {introduced[0].severity.value}: {_name(introduced[0])}{more}")
    return "; ".join(parts)


def number(value: float | int | str | None) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str) or isinstance(value, int) or not math.isfinite(value):
        return str(value)
    return f"{value:.2g}" if value == 0 or 1e-2 <= abs(value) < 1e3 else f"{value:.1e}"


def _name(f: Finding) -> str:
    return key(f.kind.value, f.layer)


def _above(value: float | int | str | None, limit: float) -> bool:
    return isinstance(value, (int, float)) and (value > limit or math.isnan(value))


def _capped(moved: float | None) -> float:
    return 0.0 if moved is None else max(min(moved, 10.0), -10.0)
