"""exploding: a layer whose gradient is so large that one optimizer step wrecks its weights.

Detects: layers classified exploding by classify.py (grad/weight above Thresholds.explode_grad_to_weight
= 1e3, i.e. more than a 10% weight change per step even at lr = 1e-4, beyond TheDeepChecker's
update-ratio bound; or an output gradient that grew more than 70x through a stack of at least 4
identical dense layers, after AUTOTRAINER). Recurrent layers that explode through time get the
dedicated exploding-through-time finding instead (checks/through_time.py).
Evidence: grad_norm, weight_norm, grad_to_weight, grad_rms, output gradient and activation RMS.
Severity: error (training diverges or overflows to inf/NaN).
"""

from __future__ import annotations

from ..report import Finding, FindingKind, Severity, Status
from .context import CheckContext, status_findings


def check(context: CheckContext) -> list[Finding]:
    return status_findings(context, Status.EXPLODING, FindingKind.EXPLODING, Severity.ERROR,
                           "has an exploding gradient")
