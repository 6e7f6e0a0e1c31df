"""Pure: the fixes for gradients out of scale: clip-gradients, lower-lr and gated-rnn.

Each function returns `Fix` candidates (cause_fixes.Fix) with typed parameters
(report/parameters.py); fixes.py resolves and ranks them (docs/fixes/clip-gradients.md,
docs/fixes/lower-lr.md, docs/fixes/gated-rnn.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gradcheck_cli.analyse.cause_fixes import Fix
from gradcheck_cli.analyse.recurrence import effective_horizon, oriented_steps
from gradcheck_cli.analyse.stats import LayerStats
from gradcheck_cli.analyse.thresholds import Thresholds, quote
from gradcheck_cli.report.parameters import ClipParameters, GatedRnnParameters, LowerLrParameters
from gradcheck_cli.report.records import RecommendationId

R = RecommendationId
RECURRENT_VANILLA = {"RNN", "RNNCell"}


def explosion_fixes(exploding: Sequence[LayerStats], layers: Sequence[LayerStats], t: Thresholds) -> list[Fix]:
    """clip-gradients calibrated on the healthy layers, and lower-lr bringing the largest
    grad/weight ratio to the healthy update ratio (t.healthy_update, with SGD)."""
    worst = max(exploding, key=lambda x: x.grad_norm or 0.0)
    fixes = [clip_fix(exploding, layers, f"gradient norms reach {worst.grad_norm:.3g} in {worst.name}", t)]
    ratios = [x.grad_to_weight for x in exploding if x.grad_to_weight]
    if ratios:
        peak = max(ratios)
        lr = round_sig(t.healthy_update / peak)
        fixes.append(Fix(
            R.LOWER_LR, names(exploding),
            f"grad/weight reaches {peak:.3g}: with SGD a step changes the weights by lr x {peak:.3g}; "
            f"lr={lr:g} brings the largest update/weight ratio to the healthy ~{quote(t.healthy_update)}",
            LowerLrParameters(lr)))
    return fixes


def clip_fix(flagged: Sequence[LayerStats], layers: Sequence[LayerStats], what: str, t: Thresholds) -> Fix:
    """clip-gradients for `flagged`, max_norm calibrated on the measured norms of the other layers
    (those with grad/weight <= t.clip_healthy_ratio; t.clip_headroom times their total norm)."""
    healthy = [x.grad_norm for x in layers if x not in flagged and x.grad_norm is not None
               and x.grad_to_weight is not None and x.grad_to_weight <= t.clip_healthy_ratio]
    if healthy:
        max_norm = round_sig(math.sqrt(sum(g * g for g in healthy)) * t.clip_headroom)
        times = "twice" if t.clip_headroom == 2 else f"{t.clip_headroom:g}x"
        basis = f"{times} the total norm {max_norm / t.clip_headroom:.3g} of the layers that are not exploding"
    else:
        max_norm, basis = t.clip_default, "the common default (no layer is healthy enough to calibrate on)"
    return Fix(R.CLIP_GRADIENTS, names(flagged), f"{what}; max_norm={max_norm:g} is {basis}",
               ClipParameters(max_norm))


def through_time_fixes(vanishing: Sequence[LayerStats], exploding: Sequence[LayerStats],
                       generic_exploding: Sequence[LayerStats], layers: Sequence[LayerStats],
                       t: Thresholds) -> list[Fix]:
    """gated-rnn for a vanilla RNN vanishing through time; clip-gradients for one exploding through
    time (Pascanu et al. 2013: clipping bounds the step however large the product of Jacobians)."""
    fixes = []
    recurrent = [x for x in vanishing if x.type_name in RECURRENT_VANILLA or x.recurrent_cell == "vanilla"]
    if recurrent:
        x = recurrent[0]
        steps = oriented_steps(x.step_grad_rms, x.step_entry_grad_rms, x.bidirectional)
        horizon = effective_horizon(steps, t.horizon_fraction)
        reach = (f", below {quote(t.horizon_fraction)} of its value at the loss {horizon} steps back"
                 if horizon else "")
        # A cell called in a loop (cell_watch.py) is replaced by a gated cell in the same loop.
        fixes.append(Fix(
            R.GATED_RNN, names(recurrent),
            f"the gradient reaching the far end of {x.name}'s {len(steps)}-step sequence is "
            f"{_far_over_peak(steps):.2g} of its peak{reach}: the recurrence shrinks it at every step",
            GatedRnnParameters(names(recurrent), in_loop=bool(x.recurrent_cell))))
    if exploding:
        x = exploding[0]
        steps = oriented_steps(x.step_grad_rms, x.step_entry_grad_rms, x.bidirectional)
        growth = steps[0] / steps[-1] if steps and steps[-1] > 0 else math.inf
        fixes.append(clip_fix([*generic_exploding, *exploding], layers,
                              f"the gradient grows {growth:.3g}x back through the {len(steps)} steps of {x.name}", t))
    return fixes


def _far_over_peak(steps: Sequence[float]) -> float:
    finite = [s for s in steps if math.isfinite(s)]
    return steps[0] / max(finite) if finite and max(finite) > 0 else 0.0


def names(layers: Sequence[LayerStats]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(x.name for x in layers))


def round_sig(value: float) -> float:
    """One significant figure; 1.0 for a value that is not a positive finite number."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    return float(f"{value:.1g}")
