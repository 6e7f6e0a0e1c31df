"""vanishing-through-time / exploding-through-time: the gradient of a recurrent layer, step by step.

Detects: nn.RNN / nn.LSTM / nn.GRU layers (any num_layers, batch_first or not, bidirectional)
whose status classify.py took from the gradient through time, and cells called once per step in a
Python loop (nn.RNNCell / GRUCell / LSTMCell, or a user's own cell layer; cell_watch.py), whose
"steps" are the states passed from each call to the next. The measurement (probe.py) is the
gradient w.r.t. the layer's *input* at every time step, which includes what flows back through
the recurrence; the gradient of the fused layer's *output* holds only each step's direct share and
would miss it. For a stacked layer (num_layers > 1) the input is the first layer's, so the profile
has gone back through every layer's recurrence.

Rules (classify.py, Pascanu, Mikolov & Bengio 2013; thresholds after AUTOTRAINER, Zhang et al.
ICSE 2021, as for the layer-wise rules):
* vanishing-through-time: a vanilla nn.RNN (or vanilla cell in a loop) whose far end of the
  sequence (the first step; for a bidirectional layer the end opposite to where the loss's
  gradient enters, recurrence.near_end)
  receives less than 1e-3 of the peak per-step gradient. LSTM/GRU are never called vanishing: at
  init their forget gates decay the gradient ~0.5-0.63x per step (tests/corpus/MANIFEST.md) and
  they learn to keep it; they are the fix. This catches a vanilla RNN whose parameter gradients
  look fine (the last steps dominate them) while its early steps get nothing.
* exploding-through-time: any recurrent layer whose far end receives more than 70x the gradient
  at the near end.

Evidence: the layer's gradient numbers (grad_norm, grad_to_weight, ...); the per-step gradient RMS
at the first, last and peak step and at the far and near ends; far_over_near and the geometric
per-step factor (far/near)^(1/(steps-1)), taken from the farthest step with a non-zero gradient
when the far steps underflowed float32 to exactly 0 (zero_steps counts them); for a cell in a
loop, recurrent_cell (vanilla | gated | unknown) and cell_calls; effective_horizon, the number of steps back from the
near end until the gradient is below 1e-3 of its value there ("all" when it never is); and, for
every weight_hh_l{k}[_reverse], its spectral radius and largest singular value with the bound
1/gamma (tanh, relu: 1; sigmoid gates: 4): a largest singular value below the bound makes
vanishing certain, one above it is necessary for exploding (Pascanu et al. 2013, section 3.2).
For LSTM/GRU the candidate ("cell") block and the largest of the gate blocks are reported
(recurrence.recurrent_weights); for a user's Linear cell, the columns of its weight that read the
state ("weight[state]", or the whole square "weight"; recurrence.cell_state_weights).
Severity: vanishing-through-time warning (the early steps do not learn; nothing crashes);
exploding-through-time error (updates blow up, then overflow).
Recommendations: gated-rnn (vanishing), clip-gradients with a max_norm (exploding).
"""

from __future__ import annotations

import math

from gradcheck_cli.analyse.checks.context import CheckContext
from gradcheck_cli.analyse.checks.parts import layer_numbers, margin_of
from gradcheck_cli.analyse.recurrence import effective_horizon, near_end, oriented_steps
from gradcheck_cli.analyse.stats import LayerStats
from gradcheck_cli.analyse.thresholds import DEFAULTS, quote
from gradcheck_cli.measure.records import RecurrentWeight
from gradcheck_cli.report.evidence import MainRecurrentWeights, Margin, RecurrentWeightNumbers, ThroughTimeEvidence
from gradcheck_cli.report.records import Finding, FindingKind, Severity, Status


def check_vanishing(context: CheckContext) -> list[Finding]:
    return _findings(context, Status.VANISHING, FindingKind.VANISHING_THROUGH_TIME, Severity.WARNING,
                     "vanishes through time")


def check_exploding(context: CheckContext) -> list[Finding]:
    return _findings(context, Status.EXPLODING, FindingKind.EXPLODING_THROUGH_TIME, Severity.ERROR,
                     "explodes through time")


def _findings(context: CheckContext, status: Status, kind: FindingKind, severity: Severity,
              phrase: str) -> list[Finding]:
    findings = []
    for layer, verdict in context.layers_with(status):
        if not verdict.through_time:
            continue
        margin = margin_of(verdict.measured, verdict.threshold, context.thresholds.borderline)
        evidence = through_time_evidence(layer, margin, context.thresholds.horizon_fraction)
        horizon = evidence.effective_horizon
        fraction = quote(context.thresholds.horizon_fraction)
        reach = (f"the gradient stays above {fraction} of its value at the near end over the whole sequence"
                 if horizon == "all" else
                 f"the gradient falls below {fraction} of its value at the near end {horizon} steps back")
        loop = f" called {len(layer.step_grad_rms) + 1} times in a loop" if layer.recurrent_cell else ""
        findings.append(Finding(kind, layer.name, severity,
                                f"{layer.name} ({layer.type_name}{loop}) {phrase}: {verdict.reason}; "
                                f"{reach}{_spectrum_phrase(layer, status == Status.VANISHING)}", evidence))
    return findings


def through_time_evidence(layer: LayerStats, margin: Margin | None = None,
                          horizon_fraction: float = DEFAULTS.horizon_fraction) -> ThroughTimeEvidence:
    """The numbers of a through-time finding (see the module docstring); the effective horizon
    ends below `horizon_fraction` (Thresholds.horizon_fraction) of the near end's gradient."""
    steps = oriented_steps(layer.step_grad_rms, layer.step_entry_grad_rms, layer.bidirectional)
    far, near = steps[0], steps[-1]
    silent = next((k for k, value in enumerate(steps) if value > 0), len(steps))
    horizon = effective_horizon(steps, horizon_fraction)
    weights = tuple(RecurrentWeightNumbers(w.name if w.block == "all" else f"{w.name}[{w.block}]",
                                           w.spectral_radius, w.largest_singular_value, w.bound)
                    for w in layer.recurrent_weights)
    main = _main_weights(layer)
    radii = [w.spectral_radius for w in main if w.spectral_radius is not None]
    summary = MainRecurrentWeights(max(w.largest_singular_value for w in main), max(radii) if radii else None,
                                   main[0].bound) if main else None
    return ThroughTimeEvidence(
        layer_numbers(layer), len(steps), layer.bidirectional,
        near_end(layer.step_entry_grad_rms, layer.bidirectional), far, near,
        far / near if near > 0 else None, _per_step_factor(steps), zero_steps=silent or None,
        recurrent_cell=layer.recurrent_cell or None,
        cell_calls=len(steps) + 1 if layer.recurrent_cell else None,
        effective_horizon="all" if horizon is None else horizon, weights=weights,
        main_weights=summary, margin=margin)


def _per_step_factor(steps: tuple[float, ...]) -> float | None:
    """Geometric mean factor per step from the far end to the near end. Steps whose gradient
    underflowed to exactly 0 (a long vanishing recurrence in float32) are left out: the factor is
    taken from the farthest step that still received something."""
    near = steps[-1]
    start = next((k for k, value in enumerate(steps) if value > 0), None)
    if not near > 0 or start is None or start >= len(steps) - 1:
        return None
    return (steps[start] / near) ** (1.0 / (len(steps) - 1 - start))


def _main_weights(layer: LayerStats) -> list[RecurrentWeight]:
    """The blocks that play W_hh's role in Pascanu's bound: nn.RNN's matrix, a gated cell's candidate,
    the state columns of a user's own cell layer (recurrence.cell_state_weights)."""
    return [w for w in layer.recurrent_weights if w.block in ("all", "cell", "state")]


def _vanilla(layer: LayerStats) -> bool:
    return layer.type_name == "RNN" or layer.recurrent_cell == "vanilla"


def _spectrum_phrase(layer: LayerStats, vanishing: bool) -> str:
    main = _main_weights(layer)
    if not main:
        return ""
    worst = max(main, key=lambda w: w.largest_singular_value)
    sigma, bound = worst.largest_singular_value, worst.bound
    block = {"all": "", "cell": " (candidate block)", "state": " (columns reading the state)"}[worst.block]
    if not _vanilla(layer) or not math.isfinite(sigma):
        meaning = "for a gated cell the forget gate, not W_hh, sets the gain"
    elif sigma < bound:
        meaning = "below it the gradient must vanish"
    elif vanishing and worst.spectral_radius is not None and worst.spectral_radius < bound:
        # Gelfand: ||W^n||^(1/n) -> spectral radius, so n steps of W_hh still shrink as rho^n.
        meaning = (f"above it one step may grow, but the spectral radius {worst.spectral_radius:.3g} is "
                   f"below it: W_hh^n shrinks as {worst.spectral_radius:.3g}^n")
    elif vanishing:
        meaning = "above it the weights alone do not force vanishing: saturated derivatives did"
    else:
        meaning = "above it the gradient can grow"
    return (f"; largest singular value of {worst.name}{block} {sigma:.3g} vs the bound 1/gamma = "
            f"{bound:g} ({meaning}, Pascanu et al. 2013)")
