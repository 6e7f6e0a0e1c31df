"""dead-relu: ReLU units that never fire on any probe sample.

Detects: a ReLU-like activation (nn.ReLU, nn.ReLU6, nn.Hardswish, or F.relu / torch.relu /
x.relu() called in a forward) fed by a layer, where more than half of the units (`dead_majority`, 0.5)
never produce a non-zero output over every sample, position and probe batch (48 samples with
the defaults). A unit is a feature, or a channel of a conv output (activation_watch.py). A dead
unit's gradient is exactly zero, so the weights that feed it never change (docs/findings/dead-relu.md, "dead
ReLUs"): the layer has lost that share of its capacity, and a whole dead layer passes no gradient
at all to anything before it. At PyTorch's default init a bias-dominated layer has about half of
its units dead by symmetry (the healthy corpus autoencoder measures 48%), so only a majority
counts, and only a majority that symmetry cannot explain: if each unit were dead with chance 1/2,
seeing at least that many dead units must have probability below `dead_significance` (1%, a one-sided
binomial test). A small layer fed by pooled features (RegNet's 8-unit squeeze-excitation) has 5 of
8 units off with chance 36%; 24 of 32 has 0.35%. A whole dead layer always counts, and so does
a majority with a visible cause (the negative bias below).
LeakyReLU, ELU, GELU, SiLU, ... always pass some gradient and are not checked.

Reported on the layer that feeds the activation. Evidence: function, activation_module,
dead_fraction, dead_units, units, outputs_per_unit, and the layer's bias_mean and activation RMS
(the pre-activation's RMS) when a negative bias is what keeps the units off. Severity: error when
the whole layer is dead (nothing before it can learn), warning otherwise.
Fixes: swap-activation (LeakyReLU / ELU / PReLU), and he-init with a zero bias when the cause is
visible: a negative bias mean of at least half the pre-activation RMS (`dead_bias_share`), i.e. the
bias alone pushes most units below zero.
"""

from __future__ import annotations

import math

from gradcheck_cli.analyse.checks.context import CheckContext, activation_counts
from gradcheck_cli.report.evidence import DeadReluEvidence
from gradcheck_cli.report.records import Finding, FindingKind, Severity


def chance_of_at_least(dead: int, units: int) -> float:
    """P(X >= dead) for X ~ Binomial(units, 1/2): that many dead units by symmetry alone."""
    return sum(math.comb(units, k) for k in range(dead, units + 1)) / 2.0 ** units


def check(context: CheckContext) -> list[Finding]:
    findings = []
    limits = context.thresholds
    for layer in context.layers:
        act = layer.activation
        dead = act.get("dead_fraction")
        if dead is None or not float(dead) > limits.dead_majority:
            continue
        dead_units, units = int(act.get("dead_units", 0)), int(act.get("units", 0))
        bias_kills = (layer.bias_mean is not None and bool(layer.output_rms)
                      and layer.bias_mean < -limits.dead_bias_share * (layer.output_rms or 0.0))
        if dead_units < units and not bias_kills and chance_of_at_least(dead_units, units) >= limits.dead_significance:
            continue  # a whole dead layer, or a visible cause, always counts
        function, module, units, per_unit = activation_counts(layer)
        evidence = DeadReluEvidence(function, module, float(dead), dead_units, units, per_unit,
                                    activation_rms=layer.output_rms, bias_mean=layer.bias_mean,
                                    negative_bias=bias_kills)
        cause = ""
        if bias_kills:
            cause = (f"; the mean bias of {layer.name} is {layer.bias_mean:.3g} against a "
                     f"pre-activation RMS of {layer.output_rms:.3g}")
        whole = float(dead) >= 1.0
        findings.append(Finding(
            FindingKind.DEAD_RELU, layer.name, Severity.ERROR if whole else Severity.WARNING,
            f"{evidence.dead_units} of the {evidence.units} units of {act.get('function')} "
            f"'{act.get('activation_module')}' after {layer.name} ({layer.type_name}) never fire on "
            f"{evidence.outputs_per_unit} probe outputs each"
            f"{' (the whole layer is dead)' if whole else ''}{cause}", evidence))
    return findings
