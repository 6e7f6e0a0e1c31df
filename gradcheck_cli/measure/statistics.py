"""Sufficient statistics of a measurement: plain numbers that merge across batches, steps and ranks.

A measurement keeps sums (of squares), counts, maxima and flags rather than the RMS or fractions
derived from them, because only sums add up: the output RMS of six batches is not the mean of two
RMS values over three batches each, but sqrt((s1 + s2) / (n1 + n2)). Each record here has a
`merge(other)` that gives the statistic of both measurements together, as if one session had seen
everything that the two saw, and properties that derive what the analysis reads. No torch: analyse/
imports these records.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class SquareSum:
    """A sum of squares over `count` elements (in float64, so it cannot overflow; norms.py)."""

    total: float
    count: int

    def merge(self, other: SquareSum) -> SquareSum:
        """Both sums together: the totals and the counts add."""
        return SquareSum(self.total + other.total, self.count + other.count)

    @property
    def rms(self) -> float | None:
        """Root of the mean square (None over no element)."""
        return math.sqrt(self.total / self.count) if self.count else None


@dataclass(frozen=True)
class StepSquares:
    """Per time step of a recurrent layer, the RMS over `calls` calls of the gradient at that step
    (first step to last): the root of the mean over the calls of each call's mean square.

    The RMS is kept as measured (its square times `calls` is the sum of squares that merging adds):
    the device's vectorised square root can differ from math.sqrt in the last bit, and a scan's
    output must not depend on where the root was taken.
    """

    rms: tuple[float, ...] = ()
    calls: int = 0
    ragged: bool = False
    """Calls with different numbers of steps were seen: there is no per-step profile (rms is ())."""

    @property
    def mean_squares(self) -> tuple[float, ...]:
        return tuple(r * r for r in self.rms)

    def merge(self, other: StepSquares) -> StepSquares:
        """The RMS over the calls of both (mean squares weighted by their counts); ragged when the
        numbers of steps differ. A side without calls is the identity."""
        if not other.calls and not other.ragged:
            return self
        if not self.calls and not self.ragged:
            return other
        calls = self.calls + other.calls
        if self.ragged or other.ragged or len(self.rms) != len(other.rms):
            return StepSquares((), calls, ragged=True)
        return StepSquares(tuple(math.sqrt((a * self.calls + b * other.calls) / calls)
                                 for a, b in zip(self.mean_squares, other.mean_squares)), calls)


@dataclass(frozen=True)
class ActivationCounts:
    """Per-unit counts of one activation fed by one layer (measure/activation_watch.py defines the
    units, the flat region and firing)."""

    function: str
    where: str
    """The activation module ("layers.1"), or the enclosing module and function ("block:tanh")."""
    per_unit: int
    """Outputs seen per unit (samples x positions, over all batches)."""
    saturated: tuple[float, ...] | None = None
    """Per unit: outputs in the flat region (None: the function has no flat region)."""
    fired: tuple[bool, ...] | None = None
    """Per unit: fired at least once (None: the function passes gradient at 0)."""

    def merge(self, other: ActivationCounts) -> ActivationCounts:
        """Counts add, firing ORs, outputs per unit add. Another width (the same site called with
        other shapes) keeps this side's units, as one session does within a scan."""
        if not self.per_unit:
            return other
        if not other.per_unit or self._units() != other._units():
            return self
        saturated = (tuple(a + b for a, b in zip(self.saturated, other.saturated))
                     if self.saturated is not None and other.saturated is not None else self.saturated)
        fired = (tuple(a or b for a, b in zip(self.fired, other.fired))
                 if self.fired is not None and other.fired is not None else self.fired)
        return ActivationCounts(self.function, self.where, self.per_unit + other.per_unit, saturated, fired)

    def _units(self) -> int:
        known = self.saturated if self.saturated is not None else self.fired
        return len(known) if known is not None else 0

    def summary(self) -> dict[str, Any]:
        """The layer's `activation` statistics: saturated_fraction (mean share of a unit's outputs
        in the flat region), saturated_units (share of units with more than half there),
        dead_fraction and dead_units (units that never fired), units, outputs_per_unit."""
        result: dict[str, Any] = {"function": self.function, "activation_module": self.where}
        if self.per_unit == 0:
            return result
        if self.saturated is not None:
            # float32 shares, as the counts were taken (a float64 division could round otherwise)
            share = array("f", [count / self.per_unit for count in self.saturated]).tolist()
            result["saturated_fraction"] = sum(share) / len(share)
            result["saturated_units"] = sum(1 for s in share if s > 0.5) / len(share)
            result["units"] = len(share)
        if self.fired is not None:
            dead = sum(1 for fired in self.fired if not fired)
            result["dead_fraction"] = dead / len(self.fired)
            result["dead_units"] = dead
            result["units"] = len(self.fired)
        result["outputs_per_unit"] = self.per_unit
        return result


def merge_optional(a: T | None, b: T | None, combine: Callable[[T, T], T]) -> T | None:
    """`combine(a, b)`, None (never measured) being the identity: merge_optional(x, None, f) is x."""
    if a is None or b is None:
        return a if b is None else b
    return combine(a, b)
