"""The shapes each module of a model sees: one forward with forward hooks, for verify's appliers.

add-normalization picks the norm from a layer's measured output shape ((N, C) -> BatchNorm1d(C),
(N, C, H, W) -> BatchNorm2d(C), (N, L, D) -> LayerNorm(D)) and add-skip makes a block residual
only where its input and output shapes match (docs/verify.md). Shapes are read, never guessed from
the layer's configuration: a Linear applied to (N, L, D) returns (N, L, out).

The forward runs as the probe runs it (training mode, gradients on: a forward may need them) and
leaves the model as it was: the hooks are removed, the buffers (BatchNorm's running statistics)
are written back, and the random number generators are restored (a dropout draws nothing that
the re-probe would then miss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gradcheck_cli.target.batches import call_model

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ModuleShapes:
    """What one module saw on its first call."""

    inputs: tuple[Shape | None, ...]
    """The shape of each positional argument (None: not a tensor)."""
    output: Shape | None
    """The output's shape (None: not a single tensor, e.g. an RNN's (output, h_n))."""
    order: int
    """The position of the first call among all the modules' calls (0: the first to finish)."""

    @property
    def input(self) -> Shape | None:
        """The first positional argument's shape."""
        return self.inputs[0] if self.inputs else None


def _shape(value: Any) -> Shape | None:
    return tuple(int(d) for d in value.shape) if isinstance(value, torch.Tensor) else None


def measure_shapes(model: nn.Module, inputs: Any) -> dict[str, ModuleShapes]:
    """Each module's shapes (by its name in `model`; "" is the model itself) on one forward of
    `inputs` (called as the scan calls the model: target/batches.call_model). A module that did
    not run is absent."""
    shapes: dict[str, ModuleShapes] = {}

    def recorder(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if name not in shapes:
                shapes[name] = ModuleShapes(tuple(_shape(a) for a in args), _shape(output), len(shapes))
        return hook

    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    handles = [module.register_forward_hook(recorder(name)) for name, module in model.named_modules()]
    try:
        with torch.random.fork_rng(devices=devices):
            call_model(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for name, value in model.named_buffers():
                if name in buffers and value.shape == buffers[name].shape:
                    value.copy_(buffers[name])
    return shapes
