"""Small helpers of the structural appliers: find a module of the copy, put another in its place,
read what the scan measured about a layer, say a list briefly.

The appliers of one combined verification (docs/verify.md) patch the same copy one after another,
and add-skip moves modules: a layer into a Residual block, its activation with it (an Identity
that says where it went stays in the activation's place). `current_name` follows those moves, so
an applier that runs later still finds the layer or activation the scan named.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from gradcheck_cli.measure.records import LayerMeasurement, Measurements


def module_at(model: nn.Module, name: str) -> nn.Module | None:
    """The module called `name` ("(root)" or "": the model itself), or None."""
    if name in ("", "(root)"):
        return model
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


class Residual(nn.Module):
    """y = x + block(x): the skip add-skip puts around a block (He et al. 2016)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        return x + self.block(x, *args, **kwargs)


class LayerAndActivation(nn.Sequential):
    """A residual block's F: the layer, then the activation module that followed it."""


class Moved(nn.Identity):
    """The place of an activation module that add-skip moved into a residual block."""

    def __init__(self, to: str) -> None:
        super().__init__()
        self.moved_to = to

    def extra_repr(self) -> str:
        return f"moved to {self.moved_to}"


def current_name(model: nn.Module, name: str) -> str:
    """The name in the copy, now, of the module the scan called `name` (moved by add-skip or not)."""
    module = module_at(model, name)
    if isinstance(module, Moved):
        return module.moved_to
    if isinstance(module, Residual):
        return f"{name}.block.0" if isinstance(module.block, LayerAndActivation) else f"{name}.block"
    return name


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where `name` is, registered under the same name in the same parent."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def placed_like(new: nn.Module, old: nn.Module) -> nn.Module:
    """`new` on the device and in the floating dtype of `old`'s parameters (as built otherwise)."""
    param = next(old.parameters(), None)
    return new if param is None else new.to(device=param.device, dtype=param.dtype)


def measured(measurements: Measurements, layer: str) -> LayerMeasurement | None:
    """The scan's measurement of `layer`, or None."""
    return next((m for m in measurements.layers if m.name == layer), None)


def listed(items: list[str], most: int = 3) -> str:
    """The first `most` items, then how many more."""
    more = f", and {len(items) - most} more" if len(items) > most else ""
    return ", ".join(items[:most]) + more


def outcome_reason(what: str, done: list[str], skipped: list[str]) -> str:
    """'<what>: a, b, c, and 2 more', then what was not applied."""
    reason = f"{what}: {listed(done)}"
    return reason + (f"; not applied: {'; '.join(skipped)}" if skipped else "")
