"""fp16-underflow: a layer whose output gradients fp16 flushes, or cannot resolve, at the loss scale in use.

Detects: under `--precision fp16`, a layer whose output gradient (the activation gradient, which
the fp16 backward carries), multiplied by the loss scale the backward ran at, fp16 rounds with an
RMS error above `fp16_gradient_error` (2e-3, bfloat16's unit roundoff 2^-9) of the gradient's RMS.
fp16's normal numbers (from 2^-14 ~ 6.1e-5) round 8x finer than that; below 2^-14 the spacing stays
2^-24, so a value keeps fewer significant bits the smaller it is, and below 2^-24 ~ 6.0e-8 it is
lost (IEEE 754 binary16; Micikevicius et al. 2018, docs/findings/fp16-underflow.md). Weighing each
element's error against the gradient's size is what tells a layer whose gradient as a whole sits in
the subnormal range from one whose small elements are a negligible share of it: a count of
elements below 2^-14 would call every deep model trained with a mean-reduced loss underflowing.
The scale is the probe's `--loss-scale` (the dynamic scaler's final scale; 1 without one). The
error and the fractions are read off the measured histogram of log2 |g| and the gradient's sum of
squares (analyse/fp16_range.py). In an fp16 probe the elements the backward already flushed are
exact zeros: they count in `zero_fraction`, not in the fractions. A gradient that holds nonzero
elements below 2^-24 (after the scale) was not carried in fp16, which has no such numbers: it
reached the layer in float32 (autocast, or keep-fp32, ran the layer or the one after it in
float32), fp16 did not round it, and it is not reported.

Only fp16 probes are checked: bf16 has float32's exponent range, and an fp32 scan reports nothing
about a precision it did not run in (its report stays what it was before mixed precision).

Evidence: precision, loss_scale, below_normal_fraction, below_subnormal_fraction, grad_max_abs,
nonzero_elements, zero_fraction, rounding_error (and margin when borderline). Severity: warning.
Fix: loss-scaling, with the initial scale computed from the measured histogram (fix_precision.py).
"""

from __future__ import annotations

from gradcheck_cli.analyse.checks.context import CheckContext
from gradcheck_cli.analyse.checks.parts import margin_of
from gradcheck_cli.analyse.fp16_range import scale_in_use, underflow_at, underflows
from gradcheck_cli.measure.records import LOG2_LOW
from gradcheck_cli.report.evidence import Fp16UnderflowEvidence
from gradcheck_cli.report.records import Finding, FindingKind, Severity


def check(context: CheckContext) -> list[Finding]:
    if context.config.precision != "fp16":
        return []
    limit = context.thresholds.fp16_gradient_error
    scale = scale_in_use(context.measurements)
    findings = []
    for layer in context.layers:
        headroom = layer.measured.headroom
        if headroom is None:
            continue
        squares = layer.measured.output_grad.total if layer.measured.output_grad is not None else None
        u = underflow_at(headroom.grad_log2_counts, LOG2_LOW, scale, squares)
        if u.nonzero == 0 or u.below_subnormal > 0 or not underflows(u, limit):
            continue  # values below 2^-24 are no fp16 numbers: this gradient reached the layer in fp32
        evidence = Fp16UnderflowEvidence(
            "fp16", scale, u.below_normal, u.below_subnormal, headroom.grad_max_abs, u.nonzero,
            headroom.grad_zero / headroom.grad_count if headroom.grad_count else 0.0, u.rounding_error,
            margin_of(u.rounding_error, limit, context.thresholds.borderline))
        findings.append(Finding(
            FindingKind.FP16_UNDERFLOW, layer.name, Severity.WARNING,
            f"{layer.name} ({layer.type_name}): fp16 carries its output gradient with a {u.rounding_error:.2g} "
            f"relative rounding error at loss scale {scale:g}: {u.below_normal:.0%} of the nonzero elements sit "
            f"below fp16's smallest normal 6.1e-5 and {u.below_subnormal:.0%} below its smallest subnormal "
            f"6e-8 (largest |g| {headroom.grad_max_abs:.3g})", evidence))
    return findings
