"""init-scale: a layer's weight std is far from the std that preserves the signal's variance,
and the probe measured the consequence.

Detects, per dense layer (nn.Linear, nn.Conv*; embeddings, normalization and recurrent layers are
left to their own checks), the measured std of its weight against the variance-preserving std for
its fan-in and the activation that follows it (init_std.py: He sqrt(2 / fan_in) for the ReLU
family, He et al. 2015; Xavier sqrt(2 / (fan_in + fan_out)) for tanh, sigmoid or none, Glorot &
Bengio 2010; LeCun sqrt(1 / fan_in) for SELU). PyTorch's default init, std 1 / sqrt(3 fan_in), is
accepted too, and so is He with mode="fan_out", sqrt(2 / fan_out) (torchvision's convolutions), so
the accepted band is [min(sane stds) / 2, max(sane stds) * 2]; every standard init lies inside it
(Thresholds.init_band_margin). A std outside the band is a finding only with
evidence that it matters (docs/findings/init-scale.md: too small, "activations shrink layer by layer; gradients are
uniformly tiny"; too large, "activations and gradients grow by ~sqrt(fan_in * gain) per layer"):

* the layer lies in a geometric run (depth.py: 4+ dense layers, every step the same way, >= 1.2x
  per layer and >= 10x overall) of the activation scale (forward) or of the output-gradient scale
  (backward) in the direction the mismatch predicts: decay for too small, growth for too large,
  AND some layer of the model is vanishing or exploding, or for too large a std non-finite (the
  overflow it ends in) (a drift that left every layer healthy is
  nothing to fix: torchvision's ResNet-50, EfficientNet-B0, RegNet and Swin-T show mild runs of
  1.6-2x per layer through their 1x1 convolutions and MLPs and train as designed); or
* the std is more than `init_gross` (10) times above the band (20x the larger of the two stds): no
  activation can absorb that. Too-small weights need the measured decay, because a deliberately
  small last layer or residual branch (GPT-2's 0.02 std, zero-init heads) is a sane design; or
* the layer feeds an activation, lies in a plain segment whose signal collapses (depth.py: the
  activation scale and the output gradient both decay below 1e-3 through depth) and its std is
  below the variance-preserving one, even inside the band. The band accepts PyTorch's default and
  LeCun's 1/fan_in for a ReLU layer because a shallow net trains with them; the measured collapse
  shows that this stack is too deep for them (He et al. 2015), so He's std is the one to use.
  The head (no activation after it) does not compound through depth and is left alone.

With --steps the std, the activation scale and the output-gradient scale are those of the model
as built (probe.py measures them on the first batch, before any step): weights that the probe's
own diverging steps blew up are never reported as the user's init.
Measured on the healthy corpus and built-ins (tests/test_init_scale.py): the only dense layers
outside the band are the GPT-2-style decoder's (0.28 to 0.56 of the band's low end) and they show
no geometric run (residual stream, LayerNorm), so nothing fires there.
Evidence: weight_std, target_std, scheme (he / xavier / lecun), default_std, band_low, band_high,
std_ratio (weight_std / target_std), fan_in, fan_out, follower (the activation), direction
("too small" / "too large"), the stack_* evidence of the run, the collapse_* evidence of a
collapse, and `margin` when the std lies within 2x of the band's edge. Severity: warning.
Fixes: he-init (ReLU family) or xavier-init (tanh / sigmoid / linear) with the exact std.
"""

from __future__ import annotations

from gradcheck_cli.analyse.checks.context import CheckContext
from gradcheck_cli.analyse.checks.parts import collapse_run, margin_of
from gradcheck_cli.analyse.depth import collapse_of, describe, describe_collapse
from gradcheck_cli.analyse.init_std import SCHEME_NAMES
from gradcheck_cli.report.evidence import InitScaleEvidence, StackRun
from gradcheck_cli.report.records import Finding, FindingKind, Severity, Status

CHECKED_TYPES = ("Linear", "Conv")


def check(context: CheckContext) -> list[Finding]:
    findings = []
    # A drift that left every layer healthy is no problem to fix: below the gross level, an init
    # is reported only when some layer actually vanishes or explodes (the consequence to explain).
    troubled = any(v.status in (Status.VANISHING, Status.EXPLODING) for v in context.verdicts)
    # Too large a std ends in overflow, so NaN/Inf gradients are its consequence too (docs/findings/init-scale.md:
    # "overflow to inf, then NaN"), e.g. once --steps diverged from such an init.
    overflowed = any(v.status == Status.NONFINITE for v in context.verdicts)
    collapses = context.collapses
    limits = context.thresholds
    for layer in context.layers:
        target = layer.init_target
        if (layer.role != "dense" or target is None or layer.weight_std is None
                or layer.weight_std <= limits.zero_weight_rms or not layer.received
                or not any(t in layer.type_name for t in CHECKED_TYPES)):
            continue
        follower = layer.activation.get("function")
        mismatch = target.mismatch(layer.weight_std)
        collapse = collapse_of(layer.name, collapses) if follower else None
        collapsed = collapse is not None and layer.weight_std < target.std
        if mismatch == 1.0 and not collapsed:
            continue
        too_small = mismatch < 1.0 or collapsed
        structure = context.structure_run(layer.name, "decay" if too_small else "growth")
        if (not (mismatch > limits.init_gross)
                and not (structure is not None and (troubled or (overflowed and not too_small)))
                and not collapsed):
            continue
        ratio = layer.weight_std / target.std
        direction = "too small" if too_small else "too large"
        evidence = InitScaleEvidence(
            layer.weight_std, target.std, target.scheme, target.default_std, target.low, target.high,
            ratio, layer.fan_in, layer.fan_out, str(follower) if follower else "none", direction,
            stack=structure, collapse=collapse_run(collapse) if collapse is not None and collapsed else None,
            margin=margin_of(mismatch, 1.0, limits.borderline) if mismatch != 1.0 else None,
            activation_rms=layer.output_rms, output_grad_rms=layer.output_grad_rms)
        consequence = (describe_collapse(collapse) if collapse is not None and collapsed
                       else _consequence(structure, layer.weight_std / target.high))
        findings.append(Finding(
            FindingKind.INIT_SCALE, layer.name, Severity.WARNING,
            f"{layer.name} ({layer.type_name}) init is {direction}: weight std {layer.weight_std:.3g} is "
            f"{ratio:.3g}x the {SCHEME_NAMES[target.scheme]} std {target.std:.3g} for fan_in "
            f"{layer.fan_in} followed by {follower or 'no activation'}; {consequence}", evidence))
    return findings


def _consequence(structure: StackRun | None, over_band: float) -> str:
    if structure is not None:
        return describe(structure)
    return f"{over_band:.3g}x above the largest sane std, more than any activation can absorb"
