"""vanishing: a layer whose gradient is too small for it to learn.

Detects: layers classified vanishing by classify.py (relative learning speed below 1e-3 of the best
dense layer, after AUTOTRAINER; typical gradient element below 1e-7, after SageMaker Debugger;
grad/weight below 1e-7; or, for recurrent layers, the gradient at the first time step below 1e-3 of
its peak, after Pascanu et al. 2013).
Evidence: grad_norm, weight_norm, grad_to_weight, grad_rms, the output gradient RMS and activation
RMS, and for recurrent layers the first/last/peak time-step gradient.
Severity: warning (training is slow or stuck in these layers, it does not crash).
"""

from __future__ import annotations

from gradcheck_cli.analyse.checks.context import CheckContext, status_findings
from gradcheck_cli.report.records import Finding, FindingKind, Severity, Status


def check(context: CheckContext) -> list[Finding]:
    return status_findings(context, Status.VANISHING, FindingKind.VANISHING, Severity.WARNING,
                           "barely receives gradient")
