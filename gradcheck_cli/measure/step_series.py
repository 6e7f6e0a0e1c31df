"""The per-step rows of a scan with --steps: what each optimizer step used and did, per layer.

take_steps (steps.py) adds one row per optimizer step, on the device: each layer's squared norm
of the gradient the step used, its update/weight ratio |Δw| / |w| and its squared weight norm
before the step, all from the sums the step takes anyway (no host sync added per step). The
weights after a step are those before the next one: the probe's batches between rounds of steps
do not change them, so only the weights after the last step are summed once more, at the end.
The probe (probe.py) adds each step's loss from the loss trace. `points` reads every row back in
one host transfer at the end of the probe: none per step, none per layer
(tests/test_host_transfers.py). The analysis turns the points into the report's series
(Report.series, analyse/pipeline.py), in the watch's schema.
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
    """Per step, each layer's squared L2 norm of the gradient the step used (clipped, if it was)."""
    received: list[frozenset[int]] = field(default_factory=list)
    """Per step, the layers that got a gradient (a layer outside the graph gets None)."""
    update: list[torch.Tensor] = field(default_factory=list)
    """Per step, each layer's update/weight ratio |Δw| / |w| (NaN for zero weights)."""
    weight_before_sq: list[torch.Tensor] = field(default_factory=list)
    """Per step, each layer's squared L2 norm of its trainable weights before the step."""

    def add(self, grad_sq: torch.Tensor, received: frozenset[int], update: torch.Tensor,
            weight_before_sq: torch.Tensor) -> None:
        """One step's row (device tensors, one value per layer; nothing is read here)."""
        self.grad_sq.append(grad_sq)
        self.received.append(received)
        self.update.append(update)
        self.weight_before_sq.append(weight_before_sq)

    def points(self, layers: list[int], final_weight_sq: torch.Tensor) -> tuple[StepPoint, ...]:
        """The steps as plain numbers for the layers `layers` (indices into session.layers), in
        that order; `final_weight_sq`: the squared weight norms after the last step. One host read
        for all of them. () without steps."""
        if not self.update:
            return ()
        if len(self.losses) != len(self.update):
            raise ValueError(f"{len(self.losses)} step losses for {len(self.update)} steps")
        after = torch.stack([*self.weight_before_sq[1:], final_weight_sq])
        grad, update, weight = torch.stack([torch.stack(self.grad_sq), torch.stack(self.update).double(),
                                            after]).tolist()
        return tuple(
            StepPoint(loss=loss,
                      grad_sq=tuple(grad[step][li] if li in self.received[step] else None for li in layers),
                      update_ratio=tuple(update[step][li] for li in layers),
                      weight_sq=tuple(weight[step][li] for li in layers))
            for step, loss in enumerate(self.losses))
