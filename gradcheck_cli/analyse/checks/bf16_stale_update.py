"""bf16-stale-update: weight updates below bf16's resolution, which a bf16 weight does not take.

Detects: under `--precision bf16` with `--steps`, a layer where more than `bf16_stale_majority`
(0.5) of the weight elements that an optimizer step moves are moved by less than 2^-8 of their
own size. bfloat16 keeps 8 significant bits, so w + dw rounds back to w when |dw| < 2^-8 |w|
(Kalamkar et al. 2019): a weight stored in bf16 does not change, and the layer does not learn.
The updates are the first steps of the probe's optimizer from the measured gradients
(measure/headroom.py: SGD lr |g|, Adam lr). An update is the learning rate times a gradient, so
the check needs the user's --optimizer and --lr, which --steps asks for: without it they are
gradcheck's defaults and the check stays silent.

torch.autocast keeps the parameters in float32 (master weights), so a model trained under autocast
does not lose these updates: the finding is about keeping the weights (or the optimizer's state)
in bf16, as pure-bf16 training does (docs/findings/bf16-stale-update.md).

Evidence: stale_fraction, update_small, update_count, resolution, optimizer, lr (and margin when
borderline). Severity: info, since the probe cannot see how the user stores the weights (under
autocast nothing is lost). Fix: fp32-master-weights.
"""

from __future__ import annotations

from gradcheck_cli.analyse.checks.context import CheckContext
from gradcheck_cli.analyse.checks.parts import margin_of
from gradcheck_cli.analyse.fp16_range import BF16_RESOLUTION
from gradcheck_cli.report.evidence import Bf16StaleUpdateEvidence
from gradcheck_cli.report.records import Finding, FindingKind, Severity


def check(context: CheckContext) -> list[Finding]:
    config = context.config
    if config.precision != "bf16" or config.steps == 0:
        return []  # without --steps the optimizer and lr are gradcheck's defaults, not the user's
    t = context.thresholds
    findings = []
    for layer in context.layers:
        headroom = layer.measured.headroom
        if headroom is None or not headroom.update_count or headroom.update_small is None:
            continue
        stale = headroom.update_small / headroom.update_count
        if not stale > t.bf16_stale_majority:
            continue
        margin = margin_of(stale, t.bf16_stale_majority, t.borderline)
        evidence = Bf16StaleUpdateEvidence(stale, headroom.update_small, headroom.update_count, BF16_RESOLUTION,
                                           config.optimizer, config.lr, margin)
        findings.append(Finding(
            FindingKind.BF16_STALE_UPDATE, layer.name, Severity.INFO,
            f"{layer.name} ({layer.type_name}): {stale:.0%} of its weight updates ({headroom.update_small} of "
            f"{headroom.update_count}) are below 2^-8 of the weight, bf16's resolution: a bf16 weight does not "
            f"take them ({config.optimizer}, lr {config.lr:g})", evidence))
    return findings
