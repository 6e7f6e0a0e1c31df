"""Small helpers of the structural appliers: find a module of the copy, put another in its place,
read what the scan measured about a layer, say a list briefly."""

from __future__ import annotations

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
