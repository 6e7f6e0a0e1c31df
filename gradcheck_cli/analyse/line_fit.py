"""Least-squares lines for the training watch's trends (grad_trend.py, weight_growth.py).

A geometric change over steps is a straight line in log space, ln x_t = a + b t, so a trend is the
least-squares slope b of the logs, and how well a line explains them is its R^2 (the share of the
variance around the mean that the line accounts for). Two bounded forms:

* LineWindow: the last `size` values at consecutive t = 0..n-1, with running sums so that the
  slope costs O(1) per added value; `fit()` recomputes the line exactly from the values (O(n)),
  for the rare moment a slope is large enough to be judged.
* LineSums: sums over any (t, y) points since a start: a few numbers, however many points.
* `break_point(values)`: where a flat stretch ends and a line begins (a trend's start).

Pure: no torch.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Line:
    slope: float
    intercept: float
    """y at t = 0."""
    r2: float
    """The share of the variance of y the line explains (0 when y does not vary)."""
    slope_se: float
    """The standard error of the slope (inf with fewer than three points)."""

    @property
    def t_statistic(self) -> float:
        return self.slope / self.slope_se if self.slope_se > 0 else math.copysign(math.inf, self.slope)


def _line(n: int, t_mean: float, y_mean: float, sxx: float, sxy: float, syy: float) -> Line:
    slope = sxy / sxx
    # A constant y leaves only rounding in syy: no variance, nothing explained.
    r2 = min(1.0, sxy * sxy / (sxx * syy)) if syy > 1e-12 * max(1.0, y_mean * y_mean) else 0.0
    residual = max(syy - slope * sxy, 0.0)
    se = math.sqrt(residual / (n - 2) / sxx) if n > 2 else math.inf
    return Line(slope, y_mean - slope * t_mean, r2, se)


class LineWindow:
    """The last `size` values y at t = 0..n-1 (the oldest at 0); O(1) per value."""

    def __init__(self, size: int) -> None:
        self.values: deque[float] = deque(maxlen=size)
        self.sum_y = 0.0
        self.sum_ty = 0.0
        self._added = 0

    @property
    def full(self) -> bool:
        return len(self.values) == self.values.maxlen

    def add(self, y: float) -> float | None:
        """Append `y`; return the value that left the window (None while it fills)."""
        left = None
        if self.full:
            left = self.values[0]
            self.sum_y -= left
            self.sum_ty -= self.sum_y  # every value that stays moves from t to t - 1
        self.sum_ty += len(self.values) * y if left is None else (len(self.values) - 1) * y
        self.values.append(y)
        self.sum_y += y
        self._added += 1
        if self._added % len(self.values) == 0:  # now and then exactly: no drift over a long run
            self.sum_y = math.fsum(self.values)
            self.sum_ty = math.fsum(t * v for t, v in enumerate(self.values))
        return left

    def clear(self) -> None:
        self.values.clear()
        self.sum_y = self.sum_ty = 0.0

    def slope(self) -> float:
        """The least-squares slope from the running sums (0 with fewer than two values)."""
        n = len(self.values)
        if n < 2:
            return 0.0
        sxx = n * (n * n - 1) / 12
        return (self.sum_ty - (n - 1) / 2 * self.sum_y) / sxx

    def fit(self) -> Line:
        """The line through the values, recomputed exactly (at least two values)."""
        n = len(self.values)
        t_mean, y_mean = (n - 1) / 2, math.fsum(self.values) / n
        sxy = math.fsum((t - t_mean) * (y - y_mean) for t, y in enumerate(self.values))
        syy = math.fsum((y - y_mean) ** 2 for y in self.values)
        return _line(n, t_mean, y_mean, n * (n * n - 1) / 12, sxy, syy)


class LineSums:
    """Sums over (t, y) points added since the start: the line through all of them."""

    def __init__(self) -> None:
        self.n = 0
        self.st = self.stt = self.sy = self.syy = self.sty = 0.0

    def add(self, t: float, y: float) -> None:
        self.n += 1
        self.st += t
        self.stt += t * t
        self.sy += y
        self.syy += y * y
        self.sty += t * y

    def fit(self) -> Line | None:
        """The line, or None with fewer than two distinct t."""
        n = self.n
        if n < 2:
            return None
        sxx = self.stt - self.st * self.st / n
        if sxx <= 0:
            return None
        t_mean, y_mean = self.st / n, self.sy / n
        return _line(n, t_mean, y_mean, sxx, self.sty - self.st * y_mean, self.syy - self.sy * y_mean)


def break_point(values: list[float], min_line: int = 3) -> int:
    """The index where `values` best fit a level that turns into a line there (a hinge,
    y = c + b max(0, t - at)), by least squares over every `at`; 0: a line all along. O(n^2), for
    a window found trending."""
    n = len(values)
    y_mean = math.fsum(values) / n
    syy = math.fsum((y - y_mean) ** 2 for y in values)
    best, best_at = math.inf, 0
    for at in range(0, n - min_line + 1):
        x = [max(0, t - at) for t in range(n)]
        x_mean = math.fsum(x) / n
        sxx = math.fsum((v - x_mean) ** 2 for v in x)
        sxy = math.fsum((v - x_mean) * (y - y_mean) for v, y in zip(x, values))
        residual = syy - sxy * sxy / sxx
        if residual < best:
            best, best_at = residual, at
    return best_at
