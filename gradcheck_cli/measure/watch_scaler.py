"""The training watch under fp16 mixed precision: a `torch.amp.GradScaler`'s loss scale.

With a GradScaler the backward runs on `scaler.scale(loss)` = S * loss, so every gradient the
watch reads at the end of the backward is S times the true one until `scaler.unscale_` /
`scaler.step` divides it back. Two consequences, both handled here (docs/architecture.md, the
watch):

* the norms: each layer's squared gradient norm is divided by S^2, S being the scale in force for
  that backward, read as the scaler's own device tensor (`scaler._scale`, which `scaler.scale()`
  multiplies the loss by). No host read: `scaler.get_scale()` would be one (a sync on a GPU).
  S is a power of two, so the division is exact.
* overflow steps: a dynamic scaler starts with a large S; when the scaled gradients overflow
  (Inf/NaN), `scaler.step` skips the optimizer step and `scaler.update` multiplies S by
  `backoff_factor` (0.5): torch's documented mechanism ("If infs/NaNs are found, optimizer.step()
  is skipped ... and the scale is multiplied by backoff_factor", torch.amp.GradScaler,
  https://pytorch.org/docs/stable/amp.html#gradient-scaling). Such a step is expected, not a
  failure: it is counted as skipped (the report's config, "skipped_steps"), not reported as
  `nonfinite`. It stays a `nonfinite` finding when it cannot be an overflow of the scaling:
  the loss itself is NaN/Inf (no scale makes a loss non-finite), the scale in force was <= 1
  (the unscaled gradients overflow too), or more than MAX_CONSECUTIVE_SKIPS steps in a row were
  skipped (K skips mean S fell by 2^K; see there).
"""

from __future__ import annotations

import math
from typing import Any

import torch

MAX_CONSECUTIVE_SKIPS = 40
"""Consecutive skipped steps beyond which the scale is collapsing, not adapting. Each skip halves
S (default backoff_factor 0.5), so K skips divide it by 2^K; fp16 spans 2^40 (its smallest
subnormal 2^-24 up to its largest finite value 65504 < 2^16), so no gradient's range can need S
to fall by more than that from any starting scale: past 40 skips in a row the gradients are
non-finite whatever the scale. (The default init_scale 2^16 reaches 1 after 16 skips, which the
scale-<=-1 rule catches first.)"""


class ScalerReading:
    """The loss scale of one `torch.amp.GradScaler` (module docstring) and its skipped steps."""

    def __init__(self, scaler: Any) -> None:
        if not hasattr(scaler, "scale") or not hasattr(scaler, "get_scale"):
            raise TypeError(f"scaler must be a torch.amp.GradScaler (got {type(scaler).__name__})")
        self.scaler = scaler
        self.skipped = 0
        """Overflow steps the scaler skipped (counted, not findings)."""
        self.consecutive = 0
        self.overflow_scale: float | None = None
        """The scale in force for the last backward, read only when its gradients overflowed."""
        self.counts: torch.Tensor | None = None
        """That backward's NaN/Inf elements per layer (on the device), taken before the loop's
        zero_grad; the watch reads them when the step is not a skipped overflow."""

    def scale(self) -> torch.Tensor | None:
        """The scale in force now, as the scaler's own device tensor (no host read); None while the
        scaler is disabled or has not scaled a loss yet (the gradients are then unscaled)."""
        if not getattr(self.scaler, "_enabled", False):
            return None
        scale = getattr(self.scaler, "_scale", None)
        return scale if isinstance(scale, torch.Tensor) else None

    def unscale_sq(self, per_layer_sq: torch.Tensor) -> torch.Tensor:
        """Squared norms of scaled gradients -> of the true ones (divided by S^2, on the device)."""
        scale = self.scale()
        if scale is None:
            return per_layer_sq
        return per_layer_sq / scale.to(per_layer_sq.device, torch.float64).square()

    def unscale_(self, grads: list[torch.Tensor | None]) -> None:
        """Copies of scaled gradients -> the true ones, in place (the watch's own copies only)."""
        scale = self.scale()
        if scale is not None:
            for grad in grads:
                if grad is not None:
                    grad.div_(scale.to(grad.device, grad.dtype))

    def note_overflow(self, counts: torch.Tensor) -> None:
        """The last backward's gradients were non-finite (`counts` per layer): remember the scale
        it ran with (one host read, on such a backward only)."""
        scale = self.scale()
        self.overflow_scale = None if scale is None else float(scale)
        self.counts = counts

    def take_counts(self) -> torch.Tensor | None:
        counts, self.counts = self.counts, None
        return counts

    def skipped_overflow(self, loss: torch.Tensor | float) -> bool:
        """Whether the step whose gradients were non-finite is a scaler's skipped overflow step
        (module docstring), counting it if so; False: a real non-finite value, a finding."""
        scale, self.overflow_scale = self.overflow_scale, None
        value = float(loss.detach().float().reshape(())) if isinstance(loss, torch.Tensor) else float(loss)
        if scale is None or scale <= 1.0 or not math.isfinite(value) \
                or self.consecutive >= MAX_CONSECUTIVE_SKIPS:
            return False
        self.skipped += 1
        self.consecutive += 1
        self.counts = None
        return True

    def stepped(self) -> None:
        """A step whose gradients were finite: the run of skipped steps is over."""
        self.consecutive = 0
