"""The training watch's device-side ring: `every` rows of per-step numbers, one host read per flush.

Each optimizer step writes one row (its loss, each layer's squared gradient norm and, on sampled
steps, each layer's update/weight ratio) into preallocated device tensors with no host sync; the
flush brings the rows, the layers' current squared weight norms and the block's non-finite
gradient counts over in ONE host transfer (docs/architecture.md, the watch), as a
series.StepBlock of plain Python numbers, and the ring starts again at row 0. Nothing grows with
the number of steps: the ring holds `every` rows whatever the length of the run.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from gradcheck_cli.measure.series import StepBlock

Reducer = Callable[[torch.Tensor, int, int, bool], torch.Tensor]
"""(flat block, rows, layers, has_update_rows) -> the same layout reduced across ranks
(measure/distributed.py). The layout: rows losses, rows x layers squared gradient norms, rows x
layers update ratios (only when has_update_rows), layers squared weight norms, layers non-finite
gradient counts."""


class StepRing:
    """`every` rows x `layers` columns on `device` (float64), written row by row."""

    def __init__(self, every: int, layers: int, device: torch.device, updates: bool) -> None:
        self.every, self.layers, self.device = every, layers, device
        self.loss = torch.full((every,), math.nan, dtype=torch.float64, device=device)
        self.grad_sq = torch.full((every, layers), math.nan, dtype=torch.float64, device=device)
        self.update_ratio = (torch.full((every, layers), math.nan, dtype=torch.float64, device=device)
                             if updates else None)
        self.nonfinite = torch.zeros(layers, dtype=torch.float64, device=device)
        self.row = 0
        self.first_step = 0
        self.updates_seen = False
        """A row of this block has a measured update ratio (else the block's update_ratio is None)."""

    @property
    def full(self) -> bool:
        return self.row >= self.every

    def write(self, loss: torch.Tensor | float, grad_sq: torch.Tensor | None) -> None:
        """The current row's loss and squared gradient norms (None: no backward this step, NaN)."""
        if isinstance(loss, torch.Tensor):
            self.loss[self.row].copy_(loss.detach().reshape(()).to(self.device, torch.float64))
        else:
            self.loss[self.row].fill_(float(loss))
        if grad_sq is not None:
            self.grad_sq[self.row].copy_(grad_sq)

    def write_update(self, ratio: torch.Tensor) -> None:
        """The current row's update/weight ratio per layer (a sampled step)."""
        if self.update_ratio is not None:
            self.update_ratio[self.row].copy_(ratio)
            self.updates_seen = True

    def advance(self) -> None:
        self.row += 1

    def flush(self, weight_sq: torch.Tensor, reduce: Reducer | None) -> StepBlock | None:
        """The rows written since the last flush as one StepBlock (one host read), then reset."""
        n, width = self.row, self.layers
        if n == 0:
            return None
        updates = self.update_ratio is not None and self.updates_seen
        parts = [self.loss[:n], self.grad_sq[:n].reshape(-1)]
        if updates and self.update_ratio is not None:
            parts.append(self.update_ratio[:n].reshape(-1))
        flat = torch.cat(parts + [weight_sq.to(self.device, torch.float64), self.nonfinite])
        if reduce is not None:
            flat = reduce(flat, n, width, updates)
        host = flat.tolist()  # the block's one host transfer
        loss, at = tuple(host[:n]), n
        grad_rows = _rows(host, at, n, width)
        at += n * width
        ratio_rows = _rows(host, at, n, width) if updates else None
        at += n * width if updates else 0
        block = StepBlock(first_step=self.first_step, loss=loss, grad_sq=grad_rows,
                          update_ratio=ratio_rows, weight_sq=tuple(host[at:at + width]),
                          nonfinite_grads=tuple(int(v) for v in host[at + width:at + 2 * width]))
        self._reset(n)
        return block

    def _reset(self, n: int) -> None:
        self.first_step += n
        self.row = 0
        self.updates_seen = False
        self.loss.fill_(math.nan)
        self.grad_sq.fill_(math.nan)
        if self.update_ratio is not None:
            self.update_ratio.fill_(math.nan)
        self.nonfinite.zero_()


def _rows(host: list[float], start: int, n: int, width: int) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(host[start + r * width:start + (r + 1) * width]) for r in range(n))
