"""Recurrent layers: the shape of the gradient through time (pure functions of the per-step
gradient profile that the measurement recorded; the weight spectra are measured in
measure/spectra.py).

Pascanu, Mikolov & Bengio 2013 (section 3.2, "On the difficulty of training recurrent neural
networks"): the gradient from step T back to step t is multiplied by the product of the Jacobians
diag(f'(a_k)) W_hh^T, k = t+1..T. With |f'| <= gamma, its norm is at most
(gamma * sigma_max(W_hh))^(T - t): sigma_max(W_hh) < 1/gamma is sufficient for vanishing, and
sigma_max(W_hh) > 1/gamma (or a spectral radius > 1/gamma for a linear recurrence) is necessary
for exploding. gamma is 1 for tanh and ReLU, 1/4 for sigmoid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gradcheck_cli.analyse.thresholds import DEFAULTS


def near_end(entry: Sequence[float], bidirectional: bool) -> str:
    """Which end of the sequence ("first" or "last" step) is nearest the loss.

    A unidirectional layer carries gradient only backwards in time, so the last step is nearest
    the loss and the first step is the far end. A bidirectional layer's fused kernel sums both
    directions at every input step, so the input-gradient profile alone cannot say which end the
    gradient came in at: `entry`, the gradient arriving at the layer's output per step (each
    step's direct share of the loss), tells. When more of it arrives at the first step than at the
    last (the loss reads the reverse direction's final output, out[:, 0]), the reverse direction
    carries the gradient from the first step towards the last, and the first step is the near end.
    Otherwise (out[:, -1], equal shares as with pooling, or a loss that reads only h_n, which the
    output gradient does not see) the forward direction's orientation is kept.
    """
    if bidirectional and len(entry) >= 2 and entry[0] > entry[-1]:
        return "first"
    return "last"


def oriented_steps(steps: Sequence[float], entry: Sequence[float], bidirectional: bool) -> tuple[float, ...]:
    """The per-step gradient ordered from the far end of the sequence to the near end (see near_end)."""
    if near_end(entry, bidirectional) == "first" and len(entry) == len(steps):
        return tuple(reversed(steps))
    return tuple(steps)


def effective_horizon(oriented: Sequence[float], fraction: float = DEFAULTS.horizon_fraction) -> int | None:
    """Steps back from the step nearest the loss until the gradient is below `fraction` of its value there
    (Thresholds.horizon_fraction: the same 1e-3 as the vanishing rules, after AUTOTRAINER).

    None when it never falls that low within the sequence (the whole sequence is within reach),
    or when no gradient arrives at the near end at all.
    """
    if len(oriented) < 2:
        return None
    near = oriented[-1]
    if not (math.isfinite(near) and near > 0):
        return None
    for back, value in enumerate(reversed(oriented[:-1]), start=1):
        if value < fraction * near:
            return back
    return None
