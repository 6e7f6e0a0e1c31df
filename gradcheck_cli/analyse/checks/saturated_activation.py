"""saturated-activation: most units of a sigmoid/tanh-like activation sit in the flat region.

Detects: an activation fed by a layer (module: nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Softsign,
nn.Hardsigmoid; functional calls seen during the forward: torch.sigmoid, torch.tanh, x.sigmoid(),
F.hardtanh, F.softsign, ...) where more than half of the units (`saturated_majority`, 0.5) are saturated.
A unit (a feature, or a channel of a conv output) is saturated when more than half of its outputs
over every sample, position and probe batch lie in the flat region (activation_watch.py):
sigmoid outside [0.02, 0.98] and tanh |y| > 0.96 (docs/findings/saturated-activation.md; the derivative is below ~8% of
its peak: 0.0196 vs 0.25, 0.078 vs 1), softsign |y| > 0.72 (the same 8% level), hardtanh and
hardsigmoid at their clamp values (derivative exactly 0). A saturated unit passes almost no
gradient back to the layer that feeds it (Glorot & Bengio 2010, where saturated top sigmoid
layers stall training).

Reported on the layer that feeds the activation. Evidence: function, activation_module (module
name, or "module:function" for a functional call), saturated_units (fraction of units),
saturated_fraction (fraction of all outputs), units, outputs_per_unit, the layer's weight_std and
the variance-preserving target_std (Xavier) when its init is visibly too large, and its
activation RMS. Severity: warning (the layer learns slowly or not at all; nothing crashes).
Fixes: swap-activation (ReLU family), and xavier-init when the feeding layer's weight std is
above the accepted band (init_std.py): then the init is what drives the units into saturation.
"""

from __future__ import annotations

from gradcheck_cli.analyse.checks.context import CheckContext, activation_counts
from gradcheck_cli.report.evidence import SaturationEvidence
from gradcheck_cli.report.records import Finding, FindingKind, Severity


def check(context: CheckContext) -> list[Finding]:
    findings = []
    majority = context.thresholds.saturated_majority
    for layer in context.layers:
        act = layer.activation
        share = act.get("saturated_units")
        if share is None or not float(share) > majority:
            continue
        outputs = float(act.get("saturated_fraction", 0.0))
        function, module, units, per_unit = activation_counts(layer)
        cause = ""
        target = layer.init_target
        too_large = layer.weight_std is not None and target is not None and layer.weight_std > target.high
        evidence = SaturationEvidence(function, module, float(share), outputs, units, per_unit,
                                      activation_rms=layer.output_rms,
                                      weight_std=layer.weight_std if too_large else None,
                                      target_std=target.std if too_large and target else None)
        if too_large and target is not None and layer.weight_std is not None:
            cause = (f"; the weight std {layer.weight_std:.3g} of {layer.name} is "
                     f"{layer.weight_std / target.std:.3g}x the Xavier std {target.std:.3g}")
        findings.append(Finding(
            FindingKind.SATURATED_ACTIVATION, layer.name, Severity.WARNING,
            f"{float(share):.0%} of the {evidence.units} units of {act.get('function')} "
            f"'{act.get('activation_module')}' after {layer.name} ({layer.type_name}) sit in the flat "
            f"region on most probe samples ({outputs:.0%} of all outputs)"
            f"{cause}", evidence))
    return findings
