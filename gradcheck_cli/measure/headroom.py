"""Mixed-precision headroom per layer: how close outputs, gradients and updates sit to fp16/bf16's edges.

A HeadroomMeter lives on the session's hook state (hooks.py calls it where a layer's output and
the gradient arriving at that output are measured). Per layer it keeps, as device tensors:

* the largest |x| of the outputs and the largest |g| of the output gradients (torch.aminmax: one
  pass; a tensor holding NaN is left out, Inf is kept);
* a histogram of floor(log2 |g|) of the nonzero finite output-gradient elements, read off the
  exponent bits of their float32 values (exact; one shift and one bincount), plus the exactly-zero
  elements: from it the analysis reads which share sits below fp16's smallest normal (2^-14) or
  subnormal (2^-24) at any loss scale S (the exponents shift by log2 S), docs/architecture.md.
  Everything is measured on the first probe batch only (the probe sets `active` for it): it
  costs a few passes over every output and output gradient, and one batch gives the shares, and
  the maxima of data drawn alike, as well as three;
* the weight elements whose first optimizer step, predicted from the first probe batch's
  gradients, is below 2^-8 of the weight (lost in a bf16 weight).

Nothing is read back per hook or per layer: read() brings every layer's numbers to the host in
one transfer at the end of the scan. Under a loss scale the hooks see S * g; `scale` holds S (a
Python float, set by the probe around its backward), and the meter divides by it before counting
and hands the unscaled gradient on to the session's own statistics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from gradcheck_cli.measure.records import LOG2_HIGH, LOG2_LOW, UPDATE_RESOLUTION, Headroom

BUCKETS = 256
"""Per-call histogram buckets: float32's biased exponent. Bucket b (1..254) counts exponent
b - 127; bucket 0 zeros and values below 2^-126; bucket 255 Inf/NaN."""
_BIAS = 127
ADAM_EPS = 1e-8
"""torch.optim.Adam/AdamW's default eps (make_optimizer builds them with it)."""
ADAMW_DECAY = 1e-2
"""torch.optim.AdamW's default weight_decay (make_optimizer builds it with it)."""


@dataclass
class _LayerHeadroom:
    """One layer's per-call device tensors, reduced at read()."""

    output_extrema: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    grad_extrema: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    """(min, max) from torch.aminmax, one per call."""
    buckets: list[torch.Tensor] = field(default_factory=list)
    nonzero: list[torch.Tensor] = field(default_factory=list)
    grad_count: int = 0
    updates: torch.Tensor | None = None
    """(small, moved) weight elements of the predicted step, as float64; None: no estimate."""


class HeadroomMeter:
    """Per-layer headroom accumulated on the device (module docstring)."""

    def __init__(self, names: Sequence[str], device: torch.device | str) -> None:
        self.layers = {name: _LayerHeadroom() for name in names}
        self.device = torch.device(device)
        self.scale = 1.0
        """The loss scale of the backward running now (1.0: unscaled)."""
        self.active = False
        """Measure the forward and backward running now: the probe switches it on for its first
        batch (probe.py); a session driven by other code (the training watch, a user's loop)
        measures no headroom and keeps nothing."""

    def output(self, name: str, out: torch.Tensor) -> None:
        """A layer's output (forward hook): its extrema."""
        if not self.active:
            return
        layer = self.layers[name]
        if out.numel():
            layer.output_extrema.append(torch.aminmax(out.detach()))
        elif not layer.output_extrema:
            zero = torch.zeros((), device=out.device)
            layer.output_extrema.append((zero, zero))

    def gradient(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        """The gradient arriving at a layer's output (tensor hook): count it and return it
        unscaled (unchanged when unscaled, so an fp32 probe's statistics keep their bytes).
        A handful of torch calls per tensor: each costs a dispatch, whatever its size."""
        g = grad.detach()
        if g.is_sparse or g.is_complex() or not g.numel():  # not counted; still unscaled
            return grad if self.scale == 1.0 else g / self.scale
        if g.dtype != torch.float64:
            g = g.float()
        if self.scale != 1.0:
            g = g / self.scale
        if self.active:
            layer = self.layers[name]
            layer.grad_extrema.append(torch.aminmax(g))
            layer.grad_count += g.numel()
            layer.buckets.append(_exponent_buckets(g))
            layer.nonzero.append(torch.count_nonzero(g))
        return g if self.scale != 1.0 else grad

    def predicted_updates(self, grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor],
                          layer_names: Sequence[str], optimizer: str, lr: float) -> None:
        """Count, per layer, the weight elements whose first optimizer step from `grads` moves them
        (nonzero) but by less than 2^-8 of the weight (lost in a bf16 weight). `layer_names[k]`
        owns `params[k]`. Kept for the first batch that calls it: the step at the initial weights.
        Grouped torch._foreach calls, then four calls per parameter."""
        if any(layer.updates is not None for layer in self.layers.values()):
            return
        given = [(_wide(g.detach()), _wide(p.detach()), name) for g, p, name in zip(grads, params, layer_names)
                 if g is not None and not g.is_sparse and not g.is_complex() and g.numel()]
        if not given:
            return
        gs, ws, names = (list(column) for column in zip(*given))
        steps = first_steps(gs, ws, optimizer, lr)
        bounds = torch._foreach_mul(torch._foreach_abs(ws), UPDATE_RESOLUTION)
        for step, bound, name in zip(steps, bounds, names):
            small = torch.count_nonzero(torch.logical_and(step < bound, step > 0))
            counts = torch.stack([small, torch.count_nonzero(step)]).double()
            layer = self.layers[name]
            layer.updates = counts if layer.updates is None else layer.updates + counts

    def read(self) -> dict[str, Headroom]:
        """Every measured layer's Headroom, by layer name: a fixed number of grouped reductions over
        all layers (not per layer) and one host transfer in all."""
        measured = {name: layer for name, layer in self.layers.items() if layer.output_extrema}
        if not measured:
            return {}
        layers = list(measured.values())
        n, device = len(layers), self.device
        buckets = torch.zeros(n, BUCKETS, dtype=torch.int64, device=device)
        nonzero = torch.zeros(n, dtype=torch.int64, device=device)
        called = [k for k, layer in enumerate(layers) for _ in layer.buckets]
        if called:
            owner = torch.tensor(called, device=device)
            buckets.index_add_(0, owner, torch.stack([b for layer in layers for b in layer.buckets]).to(device))
            nonzero.index_add_(0, owner, torch.stack([c for layer in layers for c in layer.nonzero]).to(device))
        updates = torch.full((n, 2), -1.0, dtype=torch.float64, device=device)
        estimated = [(k, layer.updates) for k, layer in enumerate(layers) if layer.updates is not None]
        if estimated:
            updates[[k for k, _ in estimated]] = torch.stack([row for _, row in estimated]).to(device)
        host = torch.cat([_max_abs([layer.output_extrema for layer in layers], device),
                          _max_abs([layer.grad_extrema for layer in layers], device),
                          nonzero.double(), updates.flatten(),
                          buckets.double().flatten()]).tolist()
        return {name: _headroom(host, k, n, layer) for k, (name, layer) in enumerate(measured.items())}


def first_steps(gs: list[torch.Tensor], ws: list[torch.Tensor], optimizer: str,
                lr: float) -> Sequence[torch.Tensor]:
    """|Δw| of the optimizer's first step from gradients gs at weights ws (make_optimizer's
    defaults): SGD moves by lr * g; Adam by lr * m/(sqrt(v) + eps) with m = g, v = g^2 after bias
    correction, i.e. lr * g / (|g| + eps); AdamW also decays the weight by lr * weight_decay * w."""
    magnitudes = torch._foreach_abs(gs)
    if optimizer == "sgd":
        return torch._foreach_mul(magnitudes, lr)
    adam = torch._foreach_div(torch._foreach_mul(gs, lr), torch._foreach_add(magnitudes, ADAM_EPS))
    if optimizer == "adamw":
        adam = torch._foreach_add(adam, torch._foreach_mul(ws, lr * ADAMW_DECAY))
    return torch._foreach_abs(adam)


def _wide(t: torch.Tensor) -> torch.Tensor:
    """float32 for the half types (so that 2^-8 * |w| and lr * |g| are not rounded to them)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _exponent_buckets(g: torch.Tensor) -> torch.Tensor:
    """Counts of float32 biased exponents (BUCKETS) of g: its exponent bits, one shift.

    A float32 x = 1.m * 2^(e - 127) for biased exponent e in 1..254, so floor(log2 |x|) = e - 127
    exactly; e = 0 holds zeros and subnormals, e = 255 Inf/NaN. float64 gradients keep their
    range: their exponents are taken with frexp (exact) and clamped into the same buckets.
    """
    if g.dtype == torch.float64:
        exponent = torch.frexp(g).exponent.to(torch.int64) - 1  # |g| = m * 2^e, 0.5 <= m < 1
        bucket = (exponent + _BIAS).clamp_(0, BUCKETS - 2)
        bucket = torch.where(g == 0, 0, torch.where(torch.isfinite(g), bucket, BUCKETS - 1))
    else:
        bucket = (g.view(torch.int32) >> 23).to(torch.uint8)  # the sign bit is shifted out
    bucket = bucket.flatten()
    if bucket.device.type == "cpu":
        return torch.bincount(bucket, minlength=BUCKETS)
    # bincount sizes its result from the largest value: a host sync on an accelerator
    counts = torch.zeros(BUCKETS, dtype=torch.int64, device=bucket.device)
    return counts.index_add_(0, bucket.long(), torch.ones(1, dtype=torch.int64, device=bucket.device)
                             .expand(bucket.numel()))


def _max_abs(extrema: list[list[tuple[torch.Tensor, torch.Tensor]]], device: torch.device) -> torch.Tensor:
    """Per layer, the largest |x| over its (min, max) pairs, as one float64 vector: -Inf for a
    layer without a pair (made 0 by _headroom), NaN when every one of its pairs held NaN (its
    tensors did: no finite maximum); a pair holding NaN is otherwise left out."""
    owners = [k for k, pairs in enumerate(extrema) for _ in pairs]
    largest = torch.full((len(extrema),), -torch.inf, dtype=torch.float64, device=device)
    if not owners:
        return largest
    lows = torch.stack([low for pairs in extrema for low, _ in pairs]).to(device, torch.float64)
    highs = torch.stack([high for pairs in extrema for _, high in pairs]).to(device, torch.float64)
    each = torch.where(torch.isnan(lows) | torch.isnan(highs), torch.nan, torch.maximum(lows.abs(), highs.abs()))
    owner = torch.tensor(owners, device=device)
    largest.scatter_reduce_(0, owner, torch.where(torch.isnan(each), -torch.inf, each), "amax")
    seen_nan = torch.zeros(len(extrema), dtype=torch.float64, device=device).index_add_(
        0, owner, torch.isnan(each).double())
    return torch.where((largest == -torch.inf) & (seen_nan > 0), torch.nan, largest)


def _headroom(host: list[float], k: int, n: int, layer: _LayerHeadroom) -> Headroom:
    """Layer k's Headroom from read()'s flat host list (n layers, blocks in read()'s order)."""
    act, grad = (v if v != -math.inf else 0.0 for v in (host[k], host[n + k]))
    zeros = layer.grad_count - int(host[2 * n + k])
    small, moved = (int(v) for v in host[3 * n + 2 * k:3 * n + 2 * k + 2])
    buckets = [int(v) for v in host[5 * n + BUCKETS * k:5 * n + BUCKETS * (k + 1)]]
    # exponent bins LOG2_LOW .. LOG2_HIGH from the buckets: bucket b is exponent b - 127, bucket 0
    # (zeros and everything below 2^-126) is LOG2_LOW's bin less the zeros; the top bin takes the rest
    low, high = LOG2_LOW + _BIAS, LOG2_HIGH + _BIAS
    bins = buckets[low:high + 1]
    bins[0] += sum(buckets[:low]) - zeros
    bins[-1] += sum(buckets[high + 1:BUCKETS - 1])
    return Headroom(
        activation_max_abs=act, grad_max_abs=grad, grad_log2_counts=tuple(bins), grad_zero=zeros,
        grad_count=layer.grad_count, update_small=small if small >= 0 else None,
        update_count=moved if moved >= 0 else None)
