"""Pure: probe numbers -> per-layer statistics (no torch)."""

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
    name: str
    type_name: str
    index: int
    params: int
    role: str
    """dense (a weight matrix or kernel), normalization (affine scale/shift), embedding (a lookup
    table whose rows are touched sparsely), other (scales, biases, positional parameters)."""
    fan_in: int | None
    weight_std: float | None
    trainable: bool
    received: bool
    grad_norm: float | None
    """Mean over probe batches of the L2 norm of the layer's own parameter gradients."""
    weight_norm: float
    grad_to_weight: float | None
    grad_rms: float | None
    """grad_norm / sqrt(params): the typical size of one gradient element."""
    nonfinite_grads: int
    output_rms: float | None
    output_grad_rms: float | None
    output_nonfinite: bool
    activation: dict[str, Any] = field(default_factory=dict)
    step_grad_rms: tuple[float, ...] = ()
    fan_out: int | None = None
    bias_mean: float | None = None
    step_entry_grad_rms: tuple[float, ...] = ()
    bidirectional: bool = False
    recurrent_weights: tuple[RecurrentWeight, ...] = ()
    recurrent_cell: str = ""
    """vanilla | gated | unknown for a layer called in a hand-written recurrent loop (LayerMeasurement)."""
    update_to_weight: float | None = None
    """With --steps: the largest relative weight change per optimizer step, |Δw| / |w|."""
    attention_scores: bool = False
    """Its output feeds a softmax over scores: a query/key projection (attention_scores.py)."""
    init_band_margin: float = DEFAULTS.init_band_margin
    """Thresholds.init_band_margin of the analysis: how far outside the sane stds init_target's band reaches."""

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
        name=lp.name, type_name=lp.type_name, index=index, params=lp.params,
        role=layer_role(lp.type_name, lp.param_dim), fan_in=fan_in(lp.weight_shape, lp.io_features),
        weight_std=lp.weight_std, trainable=lp.trainable,
        received=bool(lp.grad_norms), grad_norm=grad_norm, weight_norm=lp.weight_norm,
        grad_to_weight=gtw, grad_rms=grad_rms, nonfinite_grads=lp.nonfinite_grads,
        output_rms=lp.output_rms, output_grad_rms=lp.output_grad_rms,
        output_nonfinite=lp.output_nonfinite, activation=activation,
        fan_out=fan_out(lp.weight_shape, lp.io_features), bias_mean=lp.bias_mean,
        step_grad_rms=lp.step_grad_rms, step_entry_grad_rms=lp.step_entry_grad_rms,
        bidirectional=lp.bidirectional, recurrent_weights=lp.recurrent_weights, recurrent_cell=lp.recurrent_cell,
        update_to_weight=lp.update_to_weight,
        attention_scores=lp.attention_scores, init_band_margin=t.init_band_margin,
    )
