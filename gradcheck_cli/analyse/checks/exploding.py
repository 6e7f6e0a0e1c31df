"""exploding: a layer whose gradient is so large that one optimizer step wrecks its weights.

Detects: layers classified exploding by classify.py (grad/weight above Thresholds.explode_grad_to_weight
= 1e3, i.e. more than a 10% weight change per step even at lr = 1e-4, beyond TheDeepChecker's
update-ratio bound; or an output gradient that grew more than 70x through a stack of at least 4
identical dense layers, after AUTOTRAINER). Recurrent layers that explode through time get the
dedicated exploding-through-time finding instead (checks/through_time.py).
Evidence: grad_norm, weight_norm, grad_to_weight, grad_rms, output gradient and activation RMS.

Also detects an explosion that ends in overflow (docs/findings/exploding.md, init too large: activations
and gradients grow by ~sqrt(fan_in * gain) per layer, "overflow to inf, then NaN"): when the first
NaN/Inf is an overflow (checks/nonfinite.py cause "overflow": the op's inputs had reached
sqrt(dtype max)) and the probe measured a geometric growth run towards it (depth.py; the
activation scale for an overflow in the forward or in the loss, the output gradient for one in the
backward), the gradients are NaN/Inf (those layers are `nonfinite`) but the cause is the explosion:
one finding for the whole model (`layer` null), with the run's stack_* evidence and the overflow's
op, origin and input_max_abs. A deep N(0, 1) ReLU MLP whose forward or loss overflows is then
`exploding` at any depth, not only a NaN.
Severity: error (training diverges or overflows to inf/NaN).
"""

from __future__ import annotations

from gradcheck_cli.analyse.checks.context import CheckContext, status_findings
from gradcheck_cli.analyse.checks.nonfinite import classify_cause
from gradcheck_cli.analyse.checks.parts import stack_run
from gradcheck_cli.analyse.depth import describe
from gradcheck_cli.report.evidence import OverflowGrowthEvidence
from gradcheck_cli.report.records import Finding, FindingKind, Severity, Status


def check(context: CheckContext) -> list[Finding]:
    findings = status_findings(context, Status.EXPLODING, FindingKind.EXPLODING, Severity.ERROR,
                               "has an exploding gradient")
    return findings + _growth_into_overflow(context)


def _growth_into_overflow(context: CheckContext) -> list[Finding]:
    origin = context.measurements.nonfinite_origin
    if origin is None or classify_cause(origin) != "overflow":
        return []
    signal = "gradient" if origin.direction == "backward" else "activation"
    runs = [t for t in context.trends if t.signal == signal and t.direction == "growth"]
    if not runs:
        return []
    run = max(runs, key=lambda t: len(t.layers))
    where = "the loss" if origin.module == "(loss)" else f"{origin.module} ({origin.module_type})"
    evidence = OverflowGrowthEvidence(stack_run(run, context.measurements.residual_modules), origin.module, origin.op,
                                      origin.direction, origin.input_max_abs, origin.dtype)
    return [Finding(
        FindingKind.EXPLODING, None, Severity.ERROR,
        f"{describe(evidence.stack)}, until `{origin.op}` in {where} overflows {origin.dtype} "
        f"(max |x| {origin.input_max_abs:.3g}): the NaN/Inf is where this explosion ends", evidence)]
