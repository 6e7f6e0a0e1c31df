"""The layers' accumulators -> their LayerMeasurement records, with one host read for all layers.

Every statistic a record needs (weight norms, weight std, bias means, the output and output-gradient
sums, per-step RMS, activation counts) is computed on the device and queued in a `HostRead`; one
`.tolist()` brings them all over, whatever the number of layers (issue: on an accelerator each read
is a sync). The computations are the same ops as a per-layer read would run, so the numbers are too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from gradcheck_cli.measure.accumulators import LayerAccumulator
from gradcheck_cli.measure.activation_watch import ActivationSite
from gradcheck_cli.measure.distributed import add_shards
from gradcheck_cli.measure.hooks import RECURRENT
from gradcheck_cli.measure.norms import squared_norms
from gradcheck_cli.measure.records import LayerMeasurement
from gradcheck_cli.measure.spectra import recurrent_weights
from gradcheck_cli.measure.statistics import ActivationCounts, SquareSum, StepSquares

LayerEntry = tuple[LayerAccumulator, bool, "ActivationSite | None"]
"""A layer to record: its accumulator, whether it is trainable, the first activation it feeds."""


class HostRead:
    """Device tensors queued now, read back together later (one transfer)."""

    def __init__(self) -> None:
        self._parts: list[torch.Tensor] = []
        self._size = 0
        self.values: list[float] = []

    def add(self, t: torch.Tensor) -> slice:
        """Queue t (any shape; as float64); its values will be `values[slice]`."""
        if hasattr(t, "full_tensor"):  # an FSDP2 statistic (a DTensor): its value over every shard
            t = t.full_tensor()
        flat = t.detach().reshape(-1).to(torch.float64)
        self._parts.append(flat)
        self._size += flat.numel()
        return slice(self._size - flat.numel(), self._size)

    def read(self) -> list[float]:
        if self._parts:
            device = self._parts[0].device
            self.values = torch.cat([part.to(device) for part in self._parts]).tolist()
        return self.values


def layer_measurements(entries: Sequence[LayerEntry], params: list[nn.Parameter]) -> list[LayerMeasurement]:
    """The records of `entries` as accumulated so far, their weights as they are now."""
    host = HostRead()
    with torch.no_grad():
        weight_sq = _weight_squares([layer for layer, _, _ in entries], params, host)
        queued = [_queue(layer, params, site, host) for layer, _, site in entries]
    values = host.read()
    return [_record(layer, trainable, params, site, slices, values, values[weight_slice][0])
            for (layer, trainable, site), slices, weight_slice in zip(entries, queued, weight_sq)]


def _weight_squares(layers: list[LayerAccumulator], params: list[nn.Parameter], host: HostRead) -> list[slice]:
    """Each layer's squared weight norm (the sum over its own parameters), queued."""
    own = [params[pi] for layer in layers for pi in layer.param_indices]
    if not own:
        return []
    squares = add_shards(squared_norms(own, own[0].device), own)  # FSDP2: over every shard
    slices, start = [], 0
    for layer in layers:
        end = start + len(layer.param_indices)
        slices.append(host.add(squares[start:end].sum()))
        start = end
    return slices


def _queue(layer: LayerAccumulator, params: list[nn.Parameter], site: ActivationSite | None,
           host: HostRead) -> dict[str, slice | None]:
    """Queue the device statistics of one layer; None where it has none."""
    bias = layer.module._parameters.get("bias")
    main = _main_weight([params[pi] for pi in layer.param_indices])
    return {
        "bias_mean": host.add(_real(bias).mean()) if bias is not None and bias.numel() else None,
        "weight_std": host.add(main.detach().to(_wide(main)).std()) if main is not None else None,
        "output": host.add(torch.stack(layer.out_sq).sum()) if layer.out_sq else None,
        "output_grad": host.add(torch.stack(layer.grad_sq).sum()) if layer.grad_sq else None,
        "steps": _queue_steps(layer.step_rms, host),
        "entry_steps": _queue_steps(layer.entry_rms, host),
        "saturated": host.add(site.saturated) if site is not None and site.saturated is not None else None,
        "fired": host.add(site.fired) if site is not None and site.fired is not None else None,
    }


def _record(layer: LayerAccumulator, trainable: bool, params: list[nn.Parameter], site: ActivationSite | None,
            slices: dict[str, slice | None], values: list[float], weight_sq: float) -> LayerMeasurement:
    """The record of one layer from the values read back (`slices` into `values`)."""
    own = [params[pi] for pi in layer.param_indices]
    main_weight = _main_weight(own)

    def one(key: str) -> float | None:
        where = slices[key]
        return values[where][0] if where is not None else None

    def many(key: str) -> list[float] | None:
        where = slices[key]
        return values[where] if where is not None else None

    output = _square_sum(one("output"), layer.out_n)
    return LayerMeasurement(
        name=layer.name,
        type_name=type(layer.module).__name__,
        params=sum(p.numel() for p in own),
        # Dimensions of size 1 do not count: a (C, 1, 1) layer scale is a vector, not a kernel.
        param_dim=max(sum(1 for size in p.shape if size > 1) for p in own),
        weight_shape=tuple(main_weight.shape) if main_weight is not None else None,
        io_features=layer.io_features,
        bias_mean=one("bias_mean"),
        weight_std=one("weight_std"),
        trainable=trainable,
        order=layer.order,
        weight_sq=weight_sq,
        grad_sq=tuple(layer.batch_grad_sq) if trainable and layer.received else (),
        nonfinite_grads=layer.nonfinite_grads,
        output=output,
        output_grad=_square_sum(one("output_grad"), layer.grad_n),
        output_nonfinite=output is not None and not math.isfinite(output.total),
        activation_counts=_counts(site, many("saturated"), many("fired")) if site is not None else None,
        steps=_steps(layer.step_rms, many("steps")),
        entry_steps=_steps(layer.entry_rms, many("entry_steps")),
        bidirectional=bool(getattr(layer.module, "bidirectional", False)),
        recurrent_weights=recurrent_weights(layer.module) if isinstance(layer.module, RECURRENT) else (),
    )


def _main_weight(own: list[nn.Parameter]) -> nn.Parameter | None:
    """The layer's largest parameter of 2+ dims (its weight matrix or kernel)."""
    return max((p for p in own if p.dim() >= 2), key=lambda p: p.numel(), default=None)


def _square_sum(total: float | None, count: int) -> SquareSum | None:
    """The sum of the squared norms (None: nothing was measured)."""
    return SquareSum(total, count) if total is not None else None


def _queue_steps(per_call: list[torch.Tensor], host: HostRead) -> slice | None:
    """Per-step RMS over all calls (the root of the mean square, in float64 so that tiny values
    survive squaring), queued; None when there is no call or the calls' lengths differ."""
    if not per_call or len({t.shape[0] for t in per_call}) != 1:
        return None
    return host.add(torch.stack(per_call).double().pow(2).mean(0).sqrt())


def _steps(per_call: list[torch.Tensor], rms: list[float] | None) -> StepSquares:
    if not per_call:
        return StepSquares()
    if rms is None:
        return StepSquares((), len(per_call), ragged=True)
    return StepSquares(tuple(rms), len(per_call))


def _counts(site: ActivationSite, saturated: list[float] | None, fired: list[float] | None) -> ActivationCounts:
    """The site's counts in plain numbers (activation_watch.ActivationSite)."""
    return ActivationCounts(
        site.function, site.where, site.per_unit,
        saturated=tuple(saturated) if saturated is not None and site.per_unit else None,
        fired=tuple(bool(f) for f in fired) if fired is not None and site.per_unit else None)


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
