"""A layer's accumulators -> its LayerMeasurement record (plain numbers: the host transfers)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from gradcheck_cli.measure.accumulators import LayerAccumulator
from gradcheck_cli.measure.activation_watch import ActivationSite
from gradcheck_cli.measure.hooks import RECURRENT
from gradcheck_cli.measure.norms import squared_norms
from gradcheck_cli.measure.records import LayerMeasurement
from gradcheck_cli.measure.spectra import recurrent_weights
from gradcheck_cli.measure.statistics import SquareSum, StepSquares


def layer_measurement(layer: LayerAccumulator, params: list[nn.Parameter], trainable: bool,
                      site: ActivationSite | None) -> LayerMeasurement:
    """The record of `layer` as accumulated so far, its weights as they are now."""
    own = [params[pi] for pi in layer.param_indices]
    main_weight = max((p for p in own if p.dim() >= 2), key=lambda p: p.numel(), default=None)
    with torch.no_grad():
        weight_sq = float(squared_norms(own, own[0].device).sum())
    bias = layer.module._parameters.get("bias")
    output = _square_sum(layer.out_sq, layer.out_n)
    return LayerMeasurement(
        name=layer.name,
        type_name=type(layer.module).__name__,
        params=sum(p.numel() for p in own),
        # Dimensions of size 1 do not count: a (C, 1, 1) layer scale is a vector, not a kernel.
        param_dim=max(sum(1 for size in p.shape if size > 1) for p in own),
        weight_shape=tuple(main_weight.shape) if main_weight is not None else None,
        io_features=layer.io_features,
        bias_mean=float(_real(bias).mean()) if bias is not None and bias.numel() else None,
        weight_std=float(main_weight.detach().to(_wide(main_weight)).std()) if main_weight is not None else None,
        trainable=trainable,
        order=layer.order,
        weight_sq=weight_sq,
        grad_sq=tuple(layer.batch_grad_sq) if trainable and layer.received else (),
        nonfinite_grads=layer.nonfinite_grads,
        output=output,
        output_grad=_square_sum(layer.grad_sq, layer.grad_n),
        output_nonfinite=output is not None and not math.isfinite(output.total),
        activation_counts=site.counts() if site is not None else None,
        steps=step_squares(layer.step_rms),
        entry_steps=step_squares(layer.entry_rms),
        bidirectional=bool(getattr(layer.module, "bidirectional", False)),
        recurrent_weights=recurrent_weights(layer.module) if isinstance(layer.module, RECURRENT) else (),
    )


def _square_sum(squares: list[torch.Tensor], count: int) -> SquareSum | None:
    """The sum of the squared norms (None: nothing was measured)."""
    if not squares:
        return None
    return SquareSum(float(torch.stack(squares).sum()), count)


def step_squares(per_call: list[torch.Tensor]) -> StepSquares:
    """Per-step RMS over all calls (root of the mean square, in float64 on the host so that tiny
    values survive squaring); ragged when the calls' lengths differ."""
    if not per_call:
        return StepSquares()
    if len({t.shape[0] for t in per_call}) != 1:
        return StepSquares((), len(per_call), ragged=True)
    return StepSquares(tuple(torch.stack(per_call).cpu().double().pow(2).mean(0).sqrt().tolist()), len(per_call))


def still_lazy(layer: LayerAccumulator, params: list[nn.Parameter]) -> bool:
    """A lazy module the forward never called: its parameters have no shape or values yet, so
    there is nothing to measure; it is left out of the records (restore.py gives it back lazy)."""
    return any(is_lazy(params[pi]) for pi in layer.param_indices)


def _real(t: torch.Tensor) -> torch.Tensor:
    """A parameter's values as float64 for a statistic (the real part of a complex one)."""
    t = t.detach()
    return (t.real if t.is_complex() else t).double()


def _wide(t: torch.Tensor) -> torch.dtype:
    """float64, or complex128 for a complex tensor: its std is then that of z (a real number)."""
    return torch.complex128 if t.is_complex() else torch.float64
