"""The per-step rows of a scan with --steps: what each optimizer step used and did, per layer.

take_steps (steps.py) adds one row per optimizer step, on the device: each layer's squared norm
of the gradient the step used (read before any clipping, as the watch reads it), its update/weight
ratio |Δw| / |w| and its squared weight norm after the step. The probe (probe.py) adds each
step's loss from the loss trace. `points` reads every row back in one host transfer at the end of
the probe: no read per step and none per layer (tests/test_host_transfers.py). The analysis turns
the points into the report's series (Report.series, analyse/pipeline.py), in the watch's schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gradcheck_cli.measure.records import StepPoint


@dataclass
class StepRows:
    """The optimizer steps of one probe, in the order taken; per layer in session.layers order."""

    losses: list[float] = field(default_factory=list)
    """Per step, the loss whose gradients the step used (probe.py)."""
    grad_sq: list[torch.Tensor] = field(default_factory=list)
    """Per step, each layer's squared L2 norm of the gradient the step used, before clipping."""
    received: list[frozenset[int]] = field(default_factory=list)
    """Per step, the layers that got a gradient (a layer outside the graph gets None)."""
    update: list[torch.Tensor] = field(default_factory=list)
    """Per step, each layer's update/weight ratio |Δw| / |w| (NaN for zero weights)."""
    weight_sq: list[torch.Tensor] = field(default_factory=list)
    """Per step, each layer's squared L2 norm of its trainable weights after the step."""

    def add(self, grad_sq: torch.Tensor, received: frozenset[int], update: torch.Tensor,
            weight_sq: torch.Tensor) -> None:
        """One step's row (device tensors, one value per layer; nothing is read here)."""
        self.grad_sq.append(grad_sq)
        self.received.append(received)
        self.update.append(update)
        self.weight_sq.append(weight_sq)

    def points(self, layers: list[int]) -> tuple[StepPoint, ...]:
        """The steps as plain numbers for the layers `layers` (indices into session.layers), in
        that order; one host read for all of them. () without steps."""
        if not self.update:
            return ()
        if len(self.losses) != len(self.update):
            raise ValueError(f"{len(self.losses)} step losses for {len(self.update)} steps")
        grad, update, weight = torch.stack([torch.stack(self.grad_sq), torch.stack(self.update).double(),
                                            torch.stack(self.weight_sq)]).tolist()
        return tuple(
            StepPoint(loss=loss,
                      grad_sq=tuple(grad[step][li] if li in self.received[step] else None for li in layers),
                      update_ratio=tuple(update[step][li] for li in layers),
                      weight_sq=tuple(weight[step][li] for li in layers))
            for step, loss in enumerate(self.losses))
