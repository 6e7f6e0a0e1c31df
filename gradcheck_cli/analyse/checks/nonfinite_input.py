"""nonfinite-input: the probe batch or its target already holds NaN/Inf.

Detects: any NaN/Inf in a floating-point input or target tensor of a probe batch. Then every NaN
downstream is the data's fault, not the model's (docs/fixes/check-inputs.md).
Evidence: whether the inputs were non-finite (1/0).
Severity: error.
"""

from __future__ import annotations

from gradcheck_cli.analyse.checks.context import CheckContext
from gradcheck_cli.report.evidence import NonfiniteInputEvidence
from gradcheck_cli.report.records import Finding, FindingKind, Severity


def check(context: CheckContext) -> list[Finding]:
    if not context.measurements.nonfinite_input:
        return []
    return [Finding(FindingKind.NONFINITE_INPUT, None, Severity.ERROR,
                    "the probe batch (inputs or target) already holds NaN/Inf values",
                    NonfiniteInputEvidence())]
