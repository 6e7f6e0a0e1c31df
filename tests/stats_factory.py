"""Hand-built LayerStats for the analysis tests: the measured values go into the LayerMeasurement the
stats wrap (as the sums a session would have recorded), the derived ones into LayerStats itself."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from gradcheck_cli.analyse.stats import LayerStats
from gradcheck_cli.measure.records import LayerMeasurement
from gradcheck_cli.measure.statistics import SquareSum, StepSquares

DERIVED = frozenset(f.name for f in fields(LayerStats)) - {"measured"}


def _square_sum(rms: float | None) -> SquareSum | None:
    """The sums whose RMS is exactly `rms` (one element: sqrt(rms * rms) == rms in IEEE arithmetic)."""
    return None if rms is None else SquareSum(total=rms * rms, count=1)


def measurement(name: str = "layer", type_name: str = "Linear", params: int = 1024, weight_norm: float = 1.0,
                output_rms: float | None = None, output_grad_rms: float | None = None,
                step_grad_rms: tuple[float, ...] = (), step_entry_grad_rms: tuple[float, ...] = (),
                **raw: Any) -> LayerMeasurement:
    """A LayerMeasurement with these measured values (the rest: a trainable layer, nothing unusual)."""
    return LayerMeasurement(
        name=name, type_name=type_name, params=params, param_dim=raw.pop("param_dim", 2),
        weight_shape=raw.pop("weight_shape", None), weight_std=raw.pop("weight_std", None),
        trainable=raw.pop("trainable", True), order=raw.pop("order", 0), weight_sq=weight_norm * weight_norm,
        grad_sq=raw.pop("grad_sq", ()), nonfinite_grads=raw.pop("nonfinite_grads", 0),
        output=_square_sum(output_rms), output_grad=_square_sum(output_grad_rms),
        steps=StepSquares(rms=tuple(step_grad_rms), calls=1 if step_grad_rms else 0),
        entry_steps=StepSquares(rms=tuple(step_entry_grad_rms), calls=1 if step_entry_grad_rms else 0),
        **raw)


def layer_stats(**values: Any) -> LayerStats:
    """LayerStats from keyword values named as LayerStats reads them (measured or derived)."""
    derived = {key: values.pop(key) for key in list(values) if key in DERIVED}
    return LayerStats(measured=measurement(**values), **derived)


def with_values(layer: LayerStats, **values: Any) -> LayerStats:
    """`layer` with some values changed, measured or derived (dataclasses.replace for both)."""
    derived = {key: values.pop(key) for key in list(values) if key in DERIVED}
    measured = layer.measured
    if values:
        measured = measurement(**{**_measured_values(layer), **values})
    return replace(layer, measured=measured, **derived)


def _measured_values(layer: LayerStats) -> dict[str, Any]:
    m = layer.measured
    return {"name": m.name, "type_name": m.type_name, "params": m.params, "weight_norm": m.weight_norm,
            "output_rms": m.output_rms, "output_grad_rms": m.output_grad_rms, "step_grad_rms": m.step_grad_rms,
            "step_entry_grad_rms": m.step_entry_grad_rms, "param_dim": m.param_dim,
            "weight_shape": m.weight_shape, "weight_std": m.weight_std, "trainable": m.trainable,
            "order": m.order, "grad_sq": m.grad_sq, "nonfinite_grads": m.nonfinite_grads,
            "output_nonfinite": m.output_nonfinite, "bias_mean": m.bias_mean, "bidirectional": m.bidirectional,
            "recurrent_weights": m.recurrent_weights, "recurrent_cell": m.recurrent_cell,
            "update_to_weight": m.update_to_weight, "attention_scores": m.attention_scores,
            "io_features": m.io_features, "activation_counts": m.activation_counts}
