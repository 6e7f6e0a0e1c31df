"""Pure: a layer's measurement -> what the analysis derives from it (no torch)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from gradcheck_cli.analyse.init_std import InitTarget, init_target
from gradcheck_cli.analyse.structure import fan_in, fan_out, layer_role
from gradcheck_cli.analyse.thresholds import DEFAULTS, Thresholds
from gradcheck_cli.measure.records import LayerMeasurement, RecurrentWeight


@dataclass(frozen=True)
class LayerStats:
    """One layer as the analysis sees it: its measurement, never copied (`measured`: the sums as
    the session recorded them, read through the properties below), and what the analysis derives
    from it (the fields). Adding a measured number means adding it to LayerMeasurement only."""

    measured: LayerMeasurement
    index: int
    """Position in execution order (layers that never ran last)."""
    role: str
    """dense (a weight matrix or kernel), normalization (affine scale/shift), embedding (a lookup
    table whose rows are touched sparsely), other (scales, biases, positional parameters)."""
    fan_in: int | None
    received: bool
    """Some batch gave the layer's parameters a gradient."""
    grad_norm: float | None
    """Mean over the batches of the L2 norm of the layer's own parameter gradients."""
    grad_to_weight: float | None
    """grad_norm / weight_norm (None for zero weights: Thresholds.zero_weight_rms)."""
    grad_rms: float | None
    """grad_norm / sqrt(params): the typical size of one gradient element."""
    fan_out: int | None = None
    activation: dict[str, Any] = field(default_factory=dict)
    """The measured activation summary, plus the layer's output RMS ("rms") and output-gradient RMS."""
    init_band_margin: float = DEFAULTS.init_band_margin
    """Thresholds.init_band_margin of the analysis: how far outside the sane stds init_target's band reaches."""

    # The measured values the analysis reads, by the measurement's own names.
    @property
    def name(self) -> str:
        return self.measured.name

    @property
    def type_name(self) -> str:
        return self.measured.type_name

    @property
    def params(self) -> int:
        return self.measured.params

    @property
    def trainable(self) -> bool:
        return self.measured.trainable

    @property
    def weight_std(self) -> float | None:
        return self.measured.weight_std

    @property
    def weight_norm(self) -> float:
        return self.measured.weight_norm

    @property
    def bias_mean(self) -> float | None:
        return self.measured.bias_mean

    @property
    def nonfinite_grads(self) -> int:
        return self.measured.nonfinite_grads

    @property
    def output_rms(self) -> float | None:
        return self.measured.output_rms

    @property
    def output_grad_rms(self) -> float | None:
        return self.measured.output_grad_rms

    @property
    def output_nonfinite(self) -> bool:
        return self.measured.output_nonfinite

    @property
    def step_grad_rms(self) -> tuple[float, ...]:
        return self.measured.step_grad_rms

    @property
    def step_entry_grad_rms(self) -> tuple[float, ...]:
        return self.measured.step_entry_grad_rms

    @property
    def bidirectional(self) -> bool:
        return self.measured.bidirectional

    @property
    def recurrent_weights(self) -> tuple[RecurrentWeight, ...]:
        return self.measured.recurrent_weights

    @property
    def recurrent_cell(self) -> str:
        """vanilla | gated | unknown for a layer called in a hand-written recurrent loop."""
        return self.measured.recurrent_cell

    @property
    def update_to_weight(self) -> float | None:
        """With --steps: the largest relative weight change per optimizer step, |Δw| / |w|."""
        return self.measured.update_to_weight

    @property
    def attention_scores(self) -> bool:
        """Its output feeds a softmax over scores: a query/key projection (attention_scores.py)."""
        return self.measured.attention_scores

    @cached_property
    def init_target(self) -> InitTarget | None:
        """The variance-preserving std and accepted band for the weights, given the activation
        that follows the layer (init_std.py); None without a fan-in."""
        if not self.fan_in:
            return None
        follower = self.activation.get("function")
        return init_target(self.fan_in, self.fan_out, str(follower) if follower else None, self.init_band_margin)


def compute_stats(layers: tuple[LayerMeasurement, ...], thresholds: Thresholds = DEFAULTS) -> list[LayerStats]:
    """One LayerStats per layer, in execution order (layers that never ran last)."""
    ordered = sorted(layers, key=lambda lp: (lp.order < 0, lp.order))
    return [_layer_stats(lp, index, thresholds) for index, lp in enumerate(ordered)]


def _layer_stats(lp: LayerMeasurement, index: int, t: Thresholds) -> LayerStats:
    grad_norm = sum(lp.grad_norms) / len(lp.grad_norms) if lp.grad_norms else None
    weight_rms = lp.weight_norm / math.sqrt(lp.params) if lp.params else 0.0
    gtw = None
    # Weights whose RMS is below t.zero_weight_rms are zero (zero-initialised heads, LoRA B): a
    # gradient/weight ratio would be meaningless there.
    if grad_norm is not None and weight_rms > t.zero_weight_rms:
        gtw = grad_norm / lp.weight_norm
    grad_rms = grad_norm / math.sqrt(lp.params) if grad_norm is not None and lp.params else None
    activation = dict(lp.activation)
    if lp.output_rms is not None:
        activation["rms"] = lp.output_rms
    if lp.output_grad_rms is not None:
        activation["output_grad_rms"] = lp.output_grad_rms
    return LayerStats(
        measured=lp, index=index, role=layer_role(lp.type_name, lp.param_dim),
        fan_in=fan_in(lp.weight_shape, lp.io_features), fan_out=fan_out(lp.weight_shape, lp.io_features),
        received=bool(lp.grad_norms), grad_norm=grad_norm, grad_to_weight=gtw, grad_rms=grad_rms,
        activation=activation, init_band_margin=t.init_band_margin,
    )
