"""One module per finding kind; each turns measured statistics into findings with numeric evidence.

A check is a function `check(context) -> list[Finding]` registered under its stable FindingKind.
Kinds without a check yet are listed in the catalogue (report.FindingKind) and produce no finding.
"""

from __future__ import annotations

from collections.abc import Callable

from gradcheck_cli.analyse.checks import (
    bf16_stale_update,
    dead_relu,
    divergence,
    exploding,
    fp16_overflow,
    fp16_underflow,
    init_scale,
    nonfinite,
    nonfinite_input,
    saturated_activation,
    through_time,
    vanishing,
)
from gradcheck_cli.analyse.checks.context import CheckContext
from gradcheck_cli.report.records import Finding, FindingKind

CHECKS: dict[FindingKind, Callable[[CheckContext], list[Finding]]] = {
    FindingKind.NONFINITE_INPUT: nonfinite_input.check,
    FindingKind.NONFINITE: nonfinite.check,
    FindingKind.DIVERGENCE: divergence.check,
    FindingKind.EXPLODING: exploding.check,
    FindingKind.VANISHING: vanishing.check,
    FindingKind.EXPLODING_THROUGH_TIME: through_time.check_exploding,
    FindingKind.VANISHING_THROUGH_TIME: through_time.check_vanishing,
    FindingKind.INIT_SCALE: init_scale.check,
    FindingKind.SATURATED_ACTIVATION: saturated_activation.check,
    FindingKind.DEAD_RELU: dead_relu.check,
    FindingKind.FP16_OVERFLOW: fp16_overflow.check,
    FindingKind.FP16_UNDERFLOW: fp16_underflow.check,
    FindingKind.BF16_STALE_UPDATE: bf16_stale_update.check,
}


def run_checks(context: CheckContext) -> list[Finding]:
    findings: list[Finding] = []
    for check in CHECKS.values():
        findings.extend(check(context))
    return findings


__all__ = ["CHECKS", "CheckContext", "run_checks"]
