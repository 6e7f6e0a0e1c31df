"""Pure: the mixed-precision fixes, with their numbers, from the precision findings' evidence.

* loss-scaling (fp16-underflow, or an fp16-overflow of the scaled gradients): the initial scale
  for torch.amp.GradScaler is the largest power of two S that keeps the largest measured output
  gradient `loss_scale_margin` (8) times under fp16's 65504; the measured histograms say whether
  S also lifts every layer's gradients out of the underflow (the smallest such power of two is
  searched, analyse/fp16_range.py). When it cannot, the gradients span more than fp16's range:
  the why says so and names bf16, which has float32's range. Scaled gradients that were Inf bound
  nothing: then GradScaler starts one halving below the scale that overflowed and backs off on its
  own (docs/fixes/loss-scaling.md).
* use-bf16 (fp16-overflow of an activation): bfloat16's largest number is float32's 3.4e38.
* keep-fp32 (fp16-overflow of an activation whose next layer in execution order is a normalization):
  run in float32, the overflowing layer's values stay finite and the normalization brings them back
  into fp16's range for the layers after it (docs/fixes/keep-fp32.md).
* fp32-master-weights (bf16-stale-update): float32 weights and optimizer state keep the updates
  that bf16 rounds away (docs/fixes/fp32-master-weights.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gradcheck_cli.analyse.cause_fixes import Fix
from gradcheck_cli.analyse.fp16_range import (
    FP16_MAX,
    largest_safe_scale_log2,
    outputs_past_max,
    smallest_clearing_scale_log2,
    underflow_at,
)
from gradcheck_cli.analyse.stats import LayerStats
from gradcheck_cli.analyse.thresholds import DEFAULTS, Thresholds
from gradcheck_cli.measure.records import LOG2_LOW
from gradcheck_cli.report.evidence import Bf16StaleUpdateEvidence, Fp16OverflowEvidence, Fp16UnderflowEvidence
from gradcheck_cli.report.parameters import (
    Fp32MasterWeightsParameters,
    KeepFp32Parameters,
    LossScalingParameters,
    UseBf16Parameters,
)
from gradcheck_cli.report.records import Finding, RecommendationId

R = RecommendationId


def precision_fixes(findings: Sequence[Finding], layers: Sequence[LayerStats],
                    t: Thresholds = DEFAULTS) -> list[Fix | None]:
    """Every mixed-precision fix the findings justify (see the module docstring)."""
    underflow = [f for f in findings if isinstance(f.evidence, Fp16UnderflowEvidence)]
    overflow = [(f, f.evidence) for f in findings if isinstance(f.evidence, Fp16OverflowEvidence)]
    activation = [f for f, ev in overflow if ev.cause == "activation"]
    gradient = [f for f, ev in overflow if ev.cause == "gradient"]
    stale = [(f, f.evidence) for f in findings if isinstance(f.evidence, Bf16StaleUpdateEvidence)]
    fixes: list[Fix | None] = []
    if underflow or gradient:
        fixes.append(loss_scaling_fix(underflow, gradient, layers, t))
    if activation:
        fixes += _activation_fixes(activation, layers)
    if stale:
        worst_finding, worst = max(stale, key=lambda p: p[1].stale_fraction)
        names = tuple(f.layer for f, _ in stale if f.layer)
        fixes.append(Fix(R.FP32_MASTER_WEIGHTS, names,
                         f"{len(stale)} layers lose most of their updates in a bf16 weight (up to "
                         f"{worst.stale_fraction:.0%} of {worst_finding.layer}'s are below 2^-8 of the weight); "
                         "float32 master weights and optimizer state keep them",
                         Fp32MasterWeightsParameters(names)))
    return fixes


def loss_scaling_fix(underflow: Sequence[Finding], gradient: Sequence[Finding], layers: Sequence[LayerStats],
                     t: Thresholds = DEFAULTS) -> Fix | None:
    """loss-scaling with the largest safe power of two (None when no finite gradient was measured)."""
    maxima = [x.measured.headroom.grad_max_abs for x in layers if x.measured.headroom is not None]
    if not maxima:
        return None
    if not all(math.isfinite(g) for g in maxima):
        return _backoff_fix(gradient)  # an Inf gradient bounds nothing: no scale can be computed from it
    grad_max = max(maxima)
    high = largest_safe_scale_log2(grad_max, t.loss_scale_margin)
    if high is None:
        return None
    scale = 2.0 ** high
    keeps = (f"init_scale 2^{high} = {scale:g} is the largest power of two that keeps the largest measured "
             f"gradient {grad_max:.3g} {t.loss_scale_margin:g}x under fp16's {FP16_MAX:g}")
    names = tuple(dict.fromkeys(f.layer for f in [*underflow, *gradient] if f.layer))
    histograms = _histograms(underflow, layers)
    if not histograms:
        return Fix(R.LOSS_SCALING, names, f"the scaled gradients overflow fp16; {keeps}",
                   LossScalingParameters(scale, True))
    need = smallest_clearing_scale_log2(histograms, LOG2_LOW, t.fp16_gradient_error)
    clears = need is not None and need <= high
    worst = max((f.evidence for f in underflow if isinstance(f.evidence, Fp16UnderflowEvidence)),
                key=lambda ev: ev.rounding_error)
    said = (f"{len(histograms)} layers' gradients underflow fp16 (worst: {worst.below_normal_fraction:.0%} "
            f"below 6.1e-5, relative rounding error {worst.rounding_error:.2g} at scale {worst.loss_scale:g})")
    if clears:
        left = max(underflow_at(h, LOG2_LOW, scale, sq).rounding_error for h, sq in histograms)
        why = f"{said}; {keeps}, and lifts them (relative rounding error at most {left:.2g})"
    else:
        lift = f"2^{need}" if need is not None else "more than 2^127"
        why = (f"{said}; {keeps}, but lifting them needs {lift}: no single scale keeps both ends of the "
               "gradients in fp16's range (bf16 has float32's range)")
    return Fix(R.LOSS_SCALING, names, why, LossScalingParameters(scale, clears))


def _backoff_fix(gradient: Sequence[Finding]) -> Fix | None:
    """loss-scaling after scaled gradients that were Inf: start GradScaler one halving lower and
    let its backoff find the scale (the probe cannot say how far over 65504 they were)."""
    scales = [ev.loss_scale for f in gradient if isinstance(ev := f.evidence, Fp16OverflowEvidence)
              and ev.loss_scale is not None]
    if not scales:
        return None
    scale = max(scales) / 2
    names = tuple(dict.fromkeys(f.layer for f in gradient if f.layer))
    return Fix(R.LOSS_SCALING, names,
               f"at the loss scale {max(scales):g} the scaled gradients are Inf: past fp16's {FP16_MAX:g} by a "
               f"factor the probe cannot measure; GradScaler starting at {scale:g} halves the scale on each "
               "overflow (skipping that step) until they fit", LossScalingParameters(scale, True, backoff=True))


Histogram = tuple[tuple[int, ...], float | None]
"""A layer's log2 |g| histogram and its gradient's sum of squares (None: not measured)."""


def _histograms(underflow: Sequence[Finding], layers: Sequence[LayerStats]) -> list[Histogram]:
    """Each underflowing layer's log2 histogram and its gradient's sum of squares."""
    flagged = {f.layer for f in underflow}
    return [(x.measured.headroom.grad_log2_counts, x.measured.output_grad.total if x.measured.output_grad else None)
            for x in layers if x.name in flagged and x.measured.headroom is not None]


def _activation_fixes(activation: Sequence[Finding], layers: Sequence[LayerStats]) -> list[Fix | None]:
    """use-bf16 for the overflow site; keep-fp32 for the site and the normalization after it."""
    site = activation[0].layer
    if site is None:
        return []
    peak = float(activation[0].evidence["activation_max_abs"] or 0.0)
    fixes: list[Fix | None] = [Fix(R.USE_BF16, (site,), f"{site} {outputs_past_max(peak)}; bfloat16 has "
                                   "float32's exponent range (up to 3.4e38)", UseBf16Parameters((site,)))]
    ran = sorted((x for x in layers if x.measured.order >= 0), key=lambda x: x.index)
    at = next((i for i, x in enumerate(ran) if x.name == site), None)
    follower = ran[at + 1] if at is not None and at + 1 < len(ran) else None
    if follower is not None and follower.role == "normalization":
        pair = (site, follower.name)
        fixes.append(Fix(R.KEEP_FP32, pair,
                         f"{site} {outputs_past_max(peak)}, and {follower.name} ({follower.type_name}) after it "
                         "normalizes them: run in float32, the two keep the values finite and hand fp16 "
                         "numbers in range to the layers after them", KeepFp32Parameters(pair)))
    return fixes
