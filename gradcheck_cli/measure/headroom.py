"""Mixed-precision headroom per layer: how close outputs, gradients and updates sit to fp16/bf16's edges.

A HeadroomMeter lives on the session's hook state (hooks.py calls it where a layer's output and
the gradient arriving at that output are measured). Per layer it keeps, as device tensors:

* the largest |x| of the outputs and the largest |g| of the output gradients (NaN left out);
* a histogram of floor(log2 |g|) of the nonzero finite output-gradient elements, LOG2_LOW ..
  LOG2_HIGH, plus the exactly-zero and the NaN/Inf elements: from it the analysis reads which
  fraction sits below fp16's smallest normal (2^-14) or subnormal (2^-24) at any loss scale S
  (the exponents shift by log2 S), docs/architecture.md;
* the weight elements whose predicted update is below 2^-8 of the weight (lost in a bf16 weight).

Nothing is read back per hook or per layer: read() brings every layer's numbers to the host in
one transfer at the end of the scan. Under a loss scale the hooks see S * g; `scale` holds S (a
Python float, set by the probe before each backward), and the meter divides by it before counting
and hands the unscaled gradient on to the session's own statistics.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gradcheck_cli.measure.records import LOG2_HIGH, LOG2_LOW, UPDATE_RESOLUTION, Headroom

BINS = LOG2_HIGH - LOG2_LOW + 1
ZERO_BIN, NONFINITE_BIN = BINS, BINS + 1
"""Two extra columns after the exponent bins: exactly-zero and NaN/Inf gradient elements."""
ADAM_EPS = 1e-8
"""torch.optim.Adam/AdamW's default eps (make_optimizer builds them with it)."""
ADAMW_DECAY = 1e-2
"""torch.optim.AdamW's default weight_decay (make_optimizer builds it with it)."""


class HeadroomMeter:
    """Per-layer headroom accumulated on the device (module docstring)."""

    def __init__(self, names: Sequence[str], device: torch.device | str) -> None:
        self.row = {name: k for k, name in enumerate(names)}
        n = len(names)
        self.scale = 1.0
        """The loss scale of the backward running now (1.0: unscaled)."""
        self.maxima = torch.zeros(n, 2, dtype=torch.float64, device=device)
        """Per layer: largest |output|, largest |output gradient| (unscaled)."""
        self.counts = torch.zeros(n, BINS + 2, dtype=torch.int64, device=device)
        self.updates = torch.zeros(n, 2, dtype=torch.int64, device=device)
        """Per layer: weight elements with a small update, with a nonzero update."""
        self.seen = [False] * n
        """A layer's output was measured (its headroom is reported)."""
        self.grad_count = [0] * n
        self.updates_seen = [False] * n

    def output(self, name: str, out: torch.Tensor) -> None:
        """A layer's output (forward hook): its largest |x|."""
        row = self.row[name]
        self.seen[row] = True
        if out.numel():
            self.maxima[row, 0] = torch.maximum(self.maxima[row, 0], _max_abs(out.detach()))

    def gradient(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        """The gradient arriving at a layer's output (tensor hook): count it, return it unscaled
        (unchanged when unscaled, so an fp32 probe's statistics keep their bytes)."""
        row = self.row[name]
        g = grad.detach()
        if g.is_sparse or g.is_complex() or not g.numel():  # not counted; still unscaled
            return grad if self.scale == 1.0 else g / self.scale
        if self.scale != 1.0:
            g = g.double() / self.scale
        self.grad_count[row] += g.numel()
        self.maxima[row, 1] = torch.maximum(self.maxima[row, 1], _max_abs(g))
        self.counts[row].index_add_(0, _bin_of(g).flatten(), _ones(g))
        return g if self.scale != 1.0 else grad

    def predicted_updates(self, grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor],
                          layer_names: Sequence[str], optimizer: str, lr: float) -> None:
        """Count, per layer, the weight elements whose first optimizer step from `grads` would be
        below 2^-8 of the weight (lost in a bf16 weight). `layer_names[k]` owns `params[k]`."""
        for g, p, name in zip(grads, params, layer_names):
            if g is None or g.is_sparse or g.is_complex() or not g.numel():
                continue
            row = self.row[name]
            step = first_step(g.detach().double(), p.detach().double(), optimizer, lr)
            moved = step > 0
            small = moved & (step < UPDATE_RESOLUTION * p.detach().double().abs())
            self.updates[row] += torch.stack([small.sum(), moved.sum()])
            self.updates_seen[row] = True

    def read(self) -> dict[str, Headroom]:
        """Every measured layer's Headroom, by layer name: one host transfer in all."""
        host = torch.cat([self.maxima.flatten(), self.counts.double().flatten(),
                          self.updates.double().flatten()]).tolist()
        n = len(self.row)
        maxima, counts, updates = host[:2 * n], host[2 * n:2 * n + n * (BINS + 2)], host[2 * n + n * (BINS + 2):]
        found = {}
        for name, row in self.row.items():
            if not self.seen[row]:
                continue
            bins = [int(v) for v in counts[row * (BINS + 2):(row + 1) * (BINS + 2)]]
            small, moved = (int(v) for v in updates[2 * row:2 * row + 2])
            found[name] = Headroom(
                activation_max_abs=maxima[2 * row], grad_max_abs=maxima[2 * row + 1],
                grad_log2_counts=tuple(bins[:BINS]), grad_zero=bins[ZERO_BIN], grad_count=self.grad_count[row],
                update_small=small if self.updates_seen[row] else None,
                update_count=moved if self.updates_seen[row] else None)
        return found


def first_step(g: torch.Tensor, w: torch.Tensor, optimizer: str, lr: float) -> torch.Tensor:
    """|Δw| of the optimizer's first step from gradient g at weight w (make_optimizer's defaults):
    SGD moves by lr * g; Adam by lr * m/(sqrt(v) + eps) with m = g, v = g^2 after bias correction,
    i.e. lr * |g| / (|g| + eps); AdamW also decays the weight by lr * weight_decay * w first."""
    if optimizer == "sgd":
        return lr * g.abs()
    adam = lr * g / (g.abs() + ADAM_EPS)
    if optimizer == "adamw":
        return (adam + lr * ADAMW_DECAY * w).abs()
    return adam.abs()


def _max_abs(x: torch.Tensor) -> torch.Tensor:
    """Largest |x| as a 0-dim float64 device tensor; NaN elements are left out (Inf kept)."""
    a = x.abs()
    return torch.where(torch.isnan(a), 0.0, a).amax().double()


def _bin_of(g: torch.Tensor) -> torch.Tensor:
    """Per element: the histogram column of floor(log2 |g|) (clamped), or ZERO_BIN / NONFINITE_BIN.

    frexp is exact (subnormals included): g = m * 2^e with 0.5 <= |m| < 1, so floor(log2 |g|) = e - 1.
    """
    exponent = torch.frexp(g).exponent.to(torch.int64) - 1
    column = (exponent - LOG2_LOW).clamp_(0, BINS - 1)
    column = torch.where(g == 0, ZERO_BIN, column)
    return torch.where(torch.isfinite(g), column, NONFINITE_BIN)


def _ones(g: torch.Tensor) -> torch.Tensor:
    """One per element of g, without allocating them (an expanded view)."""
    return torch.ones(1, dtype=torch.int64, device=g.device).expand(g.numel())
