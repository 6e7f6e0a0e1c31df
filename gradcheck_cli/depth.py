"""Pure: geometric decay or growth of the signal scale through a stack of layers.

DOMAIN.md ("depth without a short path"): backpropagation multiplies one local Jacobian per
layer, so in a stack without a short path the gradient changes by a roughly constant factor per
layer, a geometric decay or growth from the output to the input; the forward activation scale does
the same when the init is mis-scaled. This module finds such runs in the measured per-layer
scales of the dense layers (weight matrices and kernels), in execution order:

* gradient: the RMS of the gradient arriving at each layer's output, followed from the output
  towards the input (the way it travels);
* activation: the RMS of each layer's output, followed from the input towards the output.

A run is `MIN_LAYERS` (4, the classifier's `min_stack`) or more consecutive dense layers whose
every step changes the scale in the same direction, by at least `MIN_GAIN` (1.2) per layer on
geometric average and by `MIN_TOTAL` (10, one decade) over the run. A healthy, well-initialised
stack measures per-layer factors that alternate around 1 (the He-init ReLU stack and the
residual and normalized built-ins); one decade over four layers (1.8 per layer) is far outside
that noise, and 1.2 per layer catches the slow growth of a deep plain BatchNorm stack (Yang et
al. 2019, measured 1.24 per layer in the corpus) once it has compounded to a decade.

The structure around a run decides which fixes apply: a normalization layer executing between its
first and last layer means the stack is already normalized; a residual add observed by the probe
(the input of a running module added to a result computed inside it) means a short path exists.
A residual stack also shows itself in the numbers: the skip path resets the scale at every block,
so its per-layer factors are not geometric and no run is found.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .report import Number
from .stats import LayerStats

MIN_LAYERS = 4
MIN_GAIN = 1.2
MIN_TOTAL = 10.0
SEQUENCE_TYPES = ("RNN", "LSTM", "GRU", "MultiheadAttention", "Embedding", "Transformer")


@dataclass(frozen=True)
class Trend:
    signal: str
    """gradient (followed output -> input) or activation (followed input -> output)."""
    direction: str
    """decay or growth, in the direction the signal travels."""
    gain: float
    """Geometric-mean factor per layer in that direction (< 1 decay, > 1 growth)."""
    total: float
    """Factor over the whole run, in that direction."""
    layers: tuple[str, ...]
    """The run's dense layers, in execution order."""
    normalized: bool
    """A normalization layer executes between the run's first and last layer."""

    @property
    def first(self) -> str:
        return self.layers[0]

    @property
    def last(self) -> str:
        return self.layers[-1]


def find_trends(layers: Sequence[LayerStats]) -> list[Trend]:
    """Geometric runs of the gradient and activation scale (layers in execution order)."""
    chain = [x for x in layers if x.role == "dense" and x.received
             and not any(t in x.type_name for t in SEQUENCE_TYPES)]
    norm_positions = [x.index for x in layers if x.role == "normalization"]
    trends = []
    for signal in ("gradient", "activation"):
        values = [x.output_grad_rms if signal == "gradient" else x.output_rms for x in chain]
        for start, end in _runs(values, backward=signal == "gradient"):
            run = chain[start:end + 1]
            factors = [_factor(values, i, signal == "gradient") for i in range(start, end)]
            total = math.prod(factors)
            gain = total ** (1.0 / len(factors))
            normalized = any(run[0].index < p < run[-1].index for p in norm_positions)
            trends.append(Trend(signal, "decay" if total < 1 else "growth", gain, total,
                                tuple(x.name for x in run), normalized))
    return trends


def trend_of(layer: str, trends: Sequence[Trend], direction: str | None = None) -> Trend | None:
    """The run containing `layer` (gradient runs first), optionally only in `direction`."""
    found = [t for t in trends if layer in t.layers and direction in (None, t.direction)]
    found.sort(key=lambda t: (t.signal != "gradient", -len(t.layers)))
    return found[0] if found else None


def trend_evidence(trend: Trend, residual_modules: Sequence[str]) -> dict[str, Number]:
    """stack_* evidence keys for a finding on a layer of the run."""
    plain = not trend.normalized and not residual_modules
    return {"stack_signal": trend.signal, "stack_trend": trend.direction,
            "stack_gain_per_layer": trend.gain, "stack_total": trend.total,
            "stack_layers": len(trend.layers), "stack_first": trend.first, "stack_last": trend.last,
            "stack_normalized": int(trend.normalized), "stack_residual": int(bool(residual_modules)),
            "stack_plain": int(plain)}


def describe(evidence: dict[str, object]) -> str:
    """The run in words, from stack_* evidence: "the gradient decays 0.13x per layer ..."."""
    signal = "gradient" if evidence["stack_signal"] == "gradient" else "activation scale"
    verb = "decays" if evidence["stack_trend"] == "decay" else "grows"
    way = "towards the input" if evidence["stack_signal"] == "gradient" else "towards the output"
    kind = "plain " if evidence.get("stack_plain") else ""
    return (f"the {signal} {verb} {float(str(evidence['stack_gain_per_layer'])):.3g}x per layer {way} "
            f"({float(str(evidence['stack_total'])):.3g}x overall) through {evidence['stack_layers']} "
            f"{kind}layers {evidence['stack_first']}..{evidence['stack_last']}")


def stack_kind(layers: Sequence[LayerStats]) -> str:
    """sequence (recurrent / attention / embedding models: LayerNorm), conv or mlp (BatchNorm)."""
    if any(any(t in x.type_name for t in SEQUENCE_TYPES) for x in layers):
        return "sequence"
    return "conv" if any("Conv" in x.type_name for x in layers) else "mlp"


def _factor(values: Sequence[float | None], i: int, backward: bool) -> float:
    a, b = values[i], values[i + 1]
    assert a is not None and b is not None
    return a / b if backward else b / a


def _usable(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0


def _runs(values: Sequence[float | None], backward: bool) -> list[tuple[int, int]]:
    """(first, last) chain indices of the geometric runs."""
    found = []
    i = 0
    while i < len(values) - 1:
        if not (_usable(values[i]) and _usable(values[i + 1])):
            i += 1
            continue
        sign = _factor(values, i, backward) > 1
        j = i
        while (j + 1 < len(values) and _usable(values[j + 1])
               and _factor(values, j, backward) != 1 and (_factor(values, j, backward) > 1) == sign):
            j += 1
        steps = j - i
        if steps + 1 >= MIN_LAYERS:
            total = math.prod(_factor(values, k, backward) for k in range(i, j))
            gain = total ** (1.0 / steps)
            if max(total, 1 / total) >= MIN_TOTAL and max(gain, 1 / gain) >= MIN_GAIN:
                found.append((i, j))
        i = max(j, i + 1)
    return found
