"""What the training watch hands over at each flush: per-step rows in plain numbers.

The watch (measure/watch.py) accumulates on the device and brings the rows of the last `every`
steps over in one host transfer; analyse/timeline.py folds each block into bounded state (running
windows, trend sums, a ring of recent points) and never keeps all steps. Under torch.distributed
the rows are already reduced across ranks (measure/distributed.py) and `rank` says where a
non-finite value appeared first.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NonfiniteEvent:
    """The first step whose loss or gradients held NaN/Inf."""

    step: int
    rank: int
    """The rank where it appeared (0 without torch.distributed); the earliest (step, rank) wins."""
    layer: str | None
    """The first layer (in backward order) whose gradient was non-finite; None: only the loss."""
    origin_module: str | None = None
    """Where replaying that step's batch with origin tracking found the first NaN/Inf (the forward
    module and op, or the backward layer); None when no replay was possible."""
    origin_op: str | None = None
    direction: str | None = None
    """forward | backward | weights (as NonfiniteOrigin.direction)."""


@dataclass(frozen=True)
class ReplicaSpread:
    """Per step of a block under DDP, where the gradients of a rank differed most from rank 0's
    after the all-reduce (which makes them replicas): the largest relative difference of a layer's
    gradient norm, |n_r - n_0| / max(n_r, n_0) (1.0 where only one of them is finite), with its
    rank and layer index (rank 1, layer 0 when all agree)."""

    relative: tuple[float, ...]
    rank: tuple[int, ...]
    layer: tuple[int, ...]
    weights: tuple[float, int, int] = (0.0, 1, 0)
    """The same comparison of the layers' weight norms at the end of the block: (relative, rank,
    layer). It catches what changed one rank's update after the backward (a gradient edited or
    clipped on one rank only before the optimizer step), which the gradients read at the end of
    the backward cannot see."""


@dataclass(frozen=True)
class StepBlock:
    """Rows of consecutive optimizer steps, layer columns in `layers` order."""

    first_step: int
    """The step number (counting from 0) of the first row."""
    loss: tuple[float, ...]
    """The loss of each step (NaN where it was non-finite)."""
    grad_sq: tuple[tuple[float, ...], ...]
    """Per step, per layer: the squared L2 norm of the layer's own gradients, read before the
    optimizer step (before any clipping in the user's loop)."""
    update_ratio: tuple[tuple[float, ...], ...] | None
    """Per step, per layer: |Δw| / |w| of the user's optimizer step (NaN: no weights); None when
    not measured for this block."""
    weight_sq: tuple[float, ...]
    """Per layer: the squared norm of its weights at the end of the block."""
    nonfinite_grads: tuple[int, ...]
    """Per layer: NaN/Inf gradient elements summed over the block's steps."""
    replicas: ReplicaSpread | None = None
    """Under data parallelism (DDP): how far each step's gradients on the other ranks were from
    rank 0's (measure/distributed.py); None otherwise."""

    @property
    def steps(self) -> range:
        return range(self.first_step, self.first_step + len(self.loss))
