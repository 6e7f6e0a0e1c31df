"""The scan configuration: every knob of a probe, as one frozen record."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

OPTIMIZERS = ("sgd", "adam", "adamw")
PRECISIONS = ("fp32", "bf16", "fp16")
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
    # Fields below were added after the first release: the report's `config` object carries each
    # only when it differs from its default, so that reports of scans that do not use them keep
    # their bytes (docs/README: "config").
    verify: bool = False
    """Apply each recommendation to a copy of the model, probe it again and report before -> after."""
    precision: str = "fp32"
    """fp32 | bf16 | fp16: the probe's forward runs under torch.autocast in that dtype."""
    loss_scale: float | str | None = None
    """With fp16/bf16: a static loss scale (a number), "dynamic" (GradScaler semantics), or None."""
    clip_grad_norm: float | None = None
    """Clip the gradients of the probe's optimizer steps to this total norm (verify: clip-gradients)."""
    ranks: int = 1
    """Processes that probed, each its own batches (WORLD_SIZE under torchrun; measure/distributed_scan.py)."""
    shard: bool = False
    """Under torchrun: the ranks hold the model together (FSDP2 fully_shard) and probe the same batches."""

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_shape"] = list(self.input_shape) if self.input_shape else None
        data["fail_on"] = list(self.fail_on)
        for name in LATER_FIELDS:
            if data[name] == getattr(ScanConfig, name):
                del data[name]
        return data


LATER_FIELDS = ("verify", "precision", "loss_scale", "clip_grad_norm", "ranks", "shard")
"""Written to the report's config only when set away from their default (ScanConfig.as_dict)."""
