"""--precision and --loss-scale: the probe's autocast context and its loss scaler.

fp32 probes run as they always did (no autocast, no scale). bf16/fp16 run the forward and the loss
under torch.autocast on the probe device (CPU autocast supports both dtypes, so the probe works
without a GPU): matmuls and convolutions run in the low dtype, the ops autocast keeps in fp32
(losses, softmax-like reductions on CUDA) stay there, and the backward of each op runs in the dtype
its forward ran in. The parameters stay fp32, as in torch.amp training.

The loss scaler follows torch.amp.GradScaler (docs/architecture.md): a static scale S multiplies
the loss before autograd and the gradients are divided by S after it; "dynamic" starts at 2^16,
halves whenever the gradients hold Inf/NaN at the current scale (GradScaler skips that optimizer
step: the probe counts it as an overflow and measures that batch again at the halved scale) and
doubles after GROWTH_INTERVAL batches in a row without one.
"""

from __future__ import annotations

import warnings
from contextlib import AbstractContextManager, nullcontext

import torch

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""--precision -> the autocast dtype (fp32: no autocast)."""
INITIAL_SCALE = 2.0 ** 16
GROWTH_FACTOR = 2.0
BACKOFF_FACTOR = 0.5
GROWTH_INTERVAL = 2000
"""torch.amp.GradScaler's defaults."""
MAX_BACKOFFS = 40
"""Halvings tried on one batch before calling its Inf/NaN gradients real (2^16 -> 2^-24): a
gradient that is non-finite at every scale is no scaler overflow, and is measured as it is."""


def autocast(device: torch.device, precision: str) -> AbstractContextManager[object]:
    """The context the probe's forward and loss run in: torch.autocast for bf16/fp16."""
    dtype = AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def unsupported_precision(device: torch.device, precision: str) -> str | None:
    """Why `precision` cannot be probed on `device` (None: it can): a device type torch has no
    autocast for, or a dtype its autocast refuses (torch then only warns and runs in fp32, so the
    probe would silently measure fp32: asked of torch itself, by entering the context)."""
    dtype = AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return None
    if not torch.amp.is_autocast_available(device.type):
        return f"torch {torch.__version__} has no autocast for device type '{device.type}'"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.autocast(device_type=device.type, dtype=dtype):
            works = torch.is_autocast_enabled(device.type) and torch.get_autocast_dtype(device.type) == dtype
    if not works:
        return f"torch {torch.__version__}'s autocast on {device.type} does not support {precision}"
    return None


class LossScaler:
    """The probe's loss scale: none, static, or dynamic with GradScaler semantics (module docstring)."""

    def __init__(self, setting: float | str | None) -> None:
        self.dynamic = setting == "dynamic"
        self.scale = INITIAL_SCALE if self.dynamic else float(setting) if setting is not None else 1.0
        self.initial: float | None = self.scale if setting is not None else None
        """The scale the probe started with (None: unscaled), for Measurements.loss_scale."""
        self.overflows = 0
        """Steps a GradScaler would have skipped (Inf/NaN gradients at the scale of the time)."""
        self._good = 0

    def retry_after_overflow(self, attempt: int) -> bool:
        """The gradients at the current scale held Inf/NaN: back off and return True when the batch
        should be taken again at the halved scale (dynamic only, at most MAX_BACKOFFS times)."""
        if not self.dynamic or attempt >= MAX_BACKOFFS:
            return False
        self.overflows += 1
        self.scale *= BACKOFF_FACTOR
        self._good = 0
        return True

    def finished_batch(self) -> None:
        """A batch measured at this scale: after GROWTH_INTERVAL in a row the dynamic scale grows."""
        if not self.dynamic:
            return
        self._good += 1
        if self._good == GROWTH_INTERVAL:
            self.scale *= GROWTH_FACTOR
            self._good = 0
