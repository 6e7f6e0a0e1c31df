"""Pure: geometric decay or growth of the signal scale through a stack of layers.

docs/findings/vanishing.md ("depth without a short path"): backpropagation multiplies one local Jacobian per
layer, so in a stack without a short path the gradient changes by a roughly constant factor per
layer, a geometric decay or growth from the output to the input; the forward activation scale does
the same when the init is mis-scaled. This module finds such runs in the measured per-layer
scales of the dense layers (weight matrices and kernels), in execution order:

* gradient: the RMS of the gradient arriving at each layer's output, followed from the output
  towards the input (the way it travels);
* activation: the RMS of each layer's output, followed from the input towards the output.

A run is `run_min_layers` (4, like the classifier's `min_stack`) or more consecutive dense layers
whose every step changes the scale in the same direction, by at least `run_min_gain` (1.2) per layer
on geometric average and by `run_min_total` (10, one decade) over the run (analyse/thresholds.py).
A healthy, well-initialised stack measures per-layer factors that alternate around 1 (the He-init ReLU stack and the
residual and normalized built-ins); one decade over four layers (1.8 per layer) is far outside
that noise, and 1.2 per layer catches the slow growth of a deep plain BatchNorm stack (Yang et
al. 2019, measured 1.24 per layer in the corpus) once it has compounded to a decade.

The structure around a run decides which fixes apply: a normalization layer executing between its
first and last layer means the stack is already normalized; a residual add observed by the probe
(the input of a running module added to a result computed inside it) means a short path exists.
A residual stack also shows itself in the numbers: the skip path resets the scale at every block,
so its per-layer factors are not geometric and no run is found.

Signal collapse (`find_collapses`, docs/findings/init-scale.md, signal collapse): in a plain stack
whose layers all shrink the signal (a ReLU stack at weight variance 1/fan_in: LeCun, or kaiming with
the wrong gain) the activation scale decays towards the output AND the output-gradient scale decays
towards the input, by the same ~2^-1/2 per layer. The weight gradient dW = delta h^T multiplies the
two, so every layer's weight gradient is uniformly small and no ratio between layers shows it; the
pair of decays does. A *plain segment* is a maximal run of consecutive dense layers of the chain
with no normalization layer executing between them (a norm resets the scale by design). Its
per-layer factor in each direction is the median of the step factors, and its decay over the
segment that median compounded over its steps: the median keeps one deliberately small layer (a
0.01-std head, a zero-init branch) or one pooling/stride step (which changes the per-element scale
of one step by design: pooling averages or picks, a stride spreads the gradient over fewer
outputs) from passing for a decay through depth, and makes the call stable from batch to batch.
A segment of `run_min_layers` or more collapses when both decays are below `collapse` (1e-3,
AUTOTRAINER's first/last threshold; He et al. 2015 train a 30-layer ReLU net at variance 1/fan_in,
2^-14.5 ~ 4e-5 over its depth, and it does not learn, while their 22-layer one, 2^-10.5 ~ 7e-4,
learns slowly). Pooling, strides and width changes move the two directions apart instead (a
funnel at He fan_in init keeps the activations and shrinks the per-element gradient; pooling grows
the per-element activation of a max and shrinks the gradient), residual adds reset both, so CNNs,
attention blocks and residual nets show no collapse; only per-layer gains below 1 on both sides do.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from gradcheck_cli.analyse.stats import LayerStats
from gradcheck_cli.analyse.thresholds import DEFAULTS, Thresholds
from gradcheck_cli.report.evidence import StackRun

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


@dataclass(frozen=True)
class Collapse:
    """A plain segment through which both the activation and the output-gradient scale decay."""

    layers: tuple[str, ...]
    """The segment's dense layers, in execution order."""
    forward_gain: float
    """Median per-layer factor of the activation RMS, followed towards the output."""
    backward_gain: float
    """Median per-layer factor of the output-gradient RMS, followed towards the input."""

    @property
    def forward_total(self) -> float:
        """The activation decay over the segment: forward_gain compounded over its steps."""
        return self.forward_gain ** (len(self.layers) - 1)

    @property
    def backward_total(self) -> float:
        """The output-gradient decay over the segment: backward_gain compounded over its steps."""
        return self.backward_gain ** (len(self.layers) - 1)

    @property
    def worst_total(self) -> float:
        """The weaker of the two decays: the number the `collapse` threshold decides on."""
        return max(self.forward_total, self.backward_total)


def find_collapses(layers: Sequence[LayerStats], t: Thresholds = DEFAULTS) -> list[Collapse]:
    """The plain segments whose activation and output-gradient scales both decay below
    `t.collapse` through depth (see the module docstring); layers in execution order."""
    found = []
    for segment in _plain_segments(layers):
        if len(segment) < t.run_min_layers:
            continue
        outs = [x.output_rms or 0.0 for x in segment]
        grads = [x.output_grad_rms or 0.0 for x in segment]
        forward = statistics.median(_factor(outs, i, backward=False) for i in range(len(segment) - 1))
        backward = statistics.median(_factor(grads, i, backward=True) for i in range(len(segment) - 1))
        collapse = Collapse(tuple(x.name for x in segment), forward, backward)
        # The compounded median must be borne out end to end: where a residual stream carries the
        # signal around branch layers whose own outputs are small, per-layer factors taken in
        # execution order compound to a collapse the network does not have (measured on a
        # residual image-transform net without normalization: median^15 ~ 1e-6, end to end 0.013).
        end_to_end = max(outs[-1] / outs[0], grads[0] / grads[-1])
        if forward < 1 and backward < 1 and collapse.worst_total < t.collapse and end_to_end < t.collapse:
            found.append(collapse)
    return found


def collapse_of(layer: str, collapses: Sequence[Collapse]) -> Collapse | None:
    return next((c for c in collapses if layer in c.layers), None)


def describe_collapse(collapse: Collapse) -> str:
    """The collapse in words: "the activation scale falls 0.71x per layer towards the output ..."."""
    return (f"through the {len(collapse.layers)} plain layers {collapse.layers[0]}..{collapse.layers[-1]} "
            f"the activation scale falls {collapse.forward_gain:.3g}x per layer towards the output "
            f"({collapse.forward_total:.2g}x overall) and the output gradient {collapse.backward_gain:.3g}x "
            f"per layer towards the input ({collapse.backward_total:.2g}x): the weight gradient "
            "dW = delta h^T carries both decays, so every layer of it learns far slower than with a "
            "variance-preserving init")


def _chain(layers: Sequence[LayerStats]) -> list[LayerStats]:
    """The dense layers (weight matrices and kernels) that received a gradient, sequence layers
    (recurrent, attention, embedding) left out, in execution order."""
    return [x for x in layers if x.role == "dense" and x.received
            and not any(t in x.type_name for t in SEQUENCE_TYPES)]


def _plain_segments(layers: Sequence[LayerStats]) -> list[list[LayerStats]]:
    """The chain cut wherever a normalization layer executes between two of its layers or a
    scale is not a positive finite number."""
    norm_positions = [x.index for x in layers if x.role == "normalization"]
    segments: list[list[LayerStats]] = []
    current: list[LayerStats] = []
    for layer in _chain(layers):
        usable = _usable(layer.output_rms) and _usable(layer.output_grad_rms)
        normalized = bool(current) and any(current[-1].index < p < layer.index for p in norm_positions)
        if not usable or normalized:
            segments.append(current)
            current = []
        if usable:
            current.append(layer)
    segments.append(current)
    return [s for s in segments if s]


def find_trends(layers: Sequence[LayerStats], t: Thresholds = DEFAULTS) -> list[Trend]:
    """Geometric runs of the gradient and activation scale (layers in execution order)."""
    chain = _chain(layers)
    norm_positions = [x.index for x in layers if x.role == "normalization"]
    trends = []
    for signal in ("gradient", "activation"):
        values = [x.output_grad_rms if signal == "gradient" else x.output_rms for x in chain]
        for start, end in _runs(values, signal == "gradient", t):
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


def describe(run: StackRun) -> str:
    """The run in words, from its stack_* evidence: "the gradient decays 0.13x per layer ..."."""
    signal = "gradient" if run.stack_signal == "gradient" else "activation scale"
    verb = "decays" if run.stack_trend == "decay" else "grows"
    way = "towards the input" if run.stack_signal == "gradient" else "towards the output"
    kind = "plain " if run.stack_plain else ""
    return (f"the {signal} {verb} {run.stack_gain_per_layer:.3g}x per layer {way} "
            f"({run.stack_total:.3g}x overall) through {run.stack_layers} "
            f"{kind}layers {run.stack_first}..{run.stack_last}")


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


def _runs(values: Sequence[float | None], backward: bool, t: Thresholds) -> list[tuple[int, int]]:
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
        if steps + 1 >= t.run_min_layers:
            total = math.prod(_factor(values, k, backward) for k in range(i, j))
            gain = total ** (1.0 / steps)
            if max(total, 1 / total) >= t.run_min_total and max(gain, 1 / gain) >= t.run_min_gain:
                found.append((i, j))
        i = max(j, i + 1)
    return found
