"""The per-layer time series of a watch report (`Report.series`, JSON key `series`).

A watch (gradcheck_cli.watch) measures every optimizer step; the report keeps a bounded sample of
those steps (analyse/series_sampler.py decides which: at most 512 regular points plus the first,
the last and where findings started), so a report of a million steps is as small as one of a
thousand. Every list is aligned with `steps`: value i was measured at steps[i]. None marks a value
that was not measured at that step: the update ratio is measured on every 10th step (and never
without an optimizer), the weight norm once per block of `every` steps, at the block's last step.
Non-finite numbers are written as "NaN"/"Infinity"/"-Infinity", as everywhere in report@1.
No torch here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gradcheck_cli.report.records import NONFINITE_STRINGS, _num

Point = float | None

METRICS = ("grad_norm", "update_to_weight", "weight_norm")
"""The per-layer metrics, in JSON order: the L2 gradient norm before the optimizer step (and before
any clipping), |Δw|/|w| of the user's optimizer step, and the L2 weight norm."""


@dataclass(frozen=True)
class LayerSeries:
    name: str
    grad_norm: tuple[Point, ...]
    update_to_weight: tuple[Point, ...]
    weight_norm: tuple[Point, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, **{metric: [_num(v) for v in getattr(self, metric)] for metric in METRICS}}


@dataclass(frozen=True)
class WatchSeries:
    steps: tuple[int, ...]
    """The optimizer steps sampled, counted from 0 (step k: the (k+1)-th w.step call), increasing."""
    loss: tuple[Point, ...]
    layers: tuple[LayerSeries, ...]
    """One per watched layer, in the report's layer order."""

    def __post_init__(self) -> None:
        lengths = {len(self.loss)} | {len(getattr(layer, m)) for layer in self.layers for m in METRICS}
        if lengths - {len(self.steps)}:
            raise ValueError(f"every series must have one value per step ({len(self.steps)} steps)")

    def as_dict(self) -> dict[str, Any]:
        return {"steps": list(self.steps), "loss": [_num(v) for v in self.loss],
                "layers": [layer.as_dict() for layer in self.layers]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WatchSeries:
        """The inverse of as_dict; TypeError/KeyError/ValueError on a malformed object."""
        steps = tuple(_step(s) for s in data["steps"])
        layers = tuple(LayerSeries(_name(item["name"]), *(_points(item[m]) for m in METRICS))
                       for item in data["layers"])
        return cls(steps, _points(data["loss"]), layers)


def _points(values: Sequence[Any]) -> tuple[Point, ...]:
    return tuple(_point(v) for v in values)


def _point(value: Any) -> Point:
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    if isinstance(value, str) and value in NONFINITE_STRINGS:
        return NONFINITE_STRINGS[value]
    raise TypeError(f"expected a number or null in a series, got {value!r}")


def _step(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer step, got {value!r}")
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a layer name, got {value!r}")
    return value
