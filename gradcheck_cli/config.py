"""The scan configuration: every knob of a probe, as one frozen record."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

OPTIMIZERS = ("sgd", "adam", "adamw")
DEFAULT_FAIL_ON = ("exploding", "nonfinite")


@dataclass(frozen=True)
class ScanConfig:
    batches: int = 3
    """Number of probe batches; statistics are averaged over them."""
    batch_size: int = 16
    seed: int = 0
    """Seeds the batches (make_batch and synthetic inputs) and the model's dropout."""
    device: str = "cpu"
    steps: int = 0
    """Optimizer steps taken between probe batches (the weights are restored afterwards)."""
    optimizer: str = "sgd"
    lr: float = 0.01
    input_shape: tuple[int, ...] | None = None
    """Per-sample input shape, used when the target has no make_batch."""
    fail_on: tuple[str, ...] = field(default=DEFAULT_FAIL_ON)
    checkpoint: str | None = None
    """A .pt/.pth/.safetensors state_dict loaded into the built model before the probe."""
    timeout: float | None = None
    """Seconds one scan may take; None: no limit."""

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_shape"] = list(self.input_shape) if self.input_shape else None
        data["fail_on"] = list(self.fail_on)
        return data
