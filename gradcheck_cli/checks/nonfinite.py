"""nonfinite: NaN or Inf in a layer's gradient (or in the loss).

Detects: any gradient element that is NaN/Inf, and a non-finite loss. The finding names the first
module, in execution order, whose output turned non-finite (the forward origin) when there is one.
NaN is usually a consequence of explosion or of one unsafe op (log/sqrt/div of non-positive values,
exp overflow), DOMAIN.md.
Evidence: nonfinite_grads (elements, summed over batches), the forward origin, the loss values.
Severity: error.
"""

from __future__ import annotations

import math

from ..report import Finding, FindingKind, Number, Severity, Status
from .context import CheckContext


def check(context: CheckContext) -> list[Finding]:
    origin = context.first_nonfinite_module
    bad_losses = sum(1 for v in context.losses if not math.isfinite(v))
    where = f"; the first module whose output turned non-finite is '{origin}'" if origin else ""
    findings = []
    for layer, _ in context.layers_with(Status.NONFINITE):
        evidence: dict[str, Number] = {"nonfinite_grads": layer.nonfinite_grads,
                                       "params": layer.params, "origin": origin,
                                       "nonfinite_losses": bad_losses}
        findings.append(Finding(
            FindingKind.NONFINITE, layer.name, Severity.ERROR,
            f"{layer.name} ({layer.type_name}) has {layer.nonfinite_grads} NaN/Inf gradient "
            f"elements{where}", evidence))
    if bad_losses and not findings:
        findings.append(Finding(
            FindingKind.NONFINITE, None, Severity.ERROR,
            f"the loss is NaN/Inf on {bad_losses} of {len(context.losses)} batches{where}",
            {"nonfinite_losses": bad_losses, "origin": origin}))
    return findings
