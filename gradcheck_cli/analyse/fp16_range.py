"""Pure: what fp16 and bf16 can hold, read off a layer's measured headroom (no torch).

The measurement (measure/headroom.py) keeps, per layer, a histogram of floor(log2 |g|) of the
nonzero output-gradient elements, unscaled; bin k counts exponent `low + k`, so the bin of
exponent e holds the values in [2^e, 2^(e+1)). A loss scale S = 2^s shifts every exponent by s,
so the share of elements that fp16 cannot represent at scale S is a sum of whole bins: exact for
a power-of-two scale (GradScaler's are), a lower bound otherwise (the bin that straddles the
bound is not counted). The limits are those of IEEE 754 binary16 and of bfloat16
(docs/findings/fp16-underflow.md, fp16-overflow.md, bf16-stale-update.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from gradcheck_cli.measure.records import Measurements

FP16_MAX = 65504.0
"""Largest finite float16: (2 - 2^-10) * 2^15."""
FP16_NORMAL_LOG2 = -14
"""float16's smallest normal number is 2^-14 ~ 6.1e-5: below it precision drops bit by bit."""
FP16_SUBNORMAL_LOG2 = -24
"""float16's smallest subnormal is 2^-24 ~ 6.0e-8: anything below it is zero."""
BF16_RESOLUTION = 2.0 ** -8
"""bfloat16 keeps 8 significant bits: w + dw rounds back to w when |dw| < 2^-8 |w|."""
SCALE_LOG2_RANGE = range(0, 128)
"""The scales 2^0 .. 2^127 the search for an underflow-free scale tries (fp32's exponent range)."""


def count_below(counts: Sequence[int], low: int, bound_log2: int, scale: float) -> int:
    """Elements whose |g| * scale lies below 2^bound_log2: the bins whose whole range does."""
    limit = bound_log2 - math.log2(scale)  # |g| < 2^limit
    return sum(n for k, n in enumerate(counts) if low + k + 1 <= limit)


@dataclass(frozen=True)
class Underflow:
    """A layer's nonzero output-gradient elements against fp16's smallest numbers at one scale."""

    below_normal: float
    """Share below the smallest normal 2^-14 after scaling."""
    below_subnormal: float
    """Share below the smallest subnormal 2^-24 after scaling (zero, or rounded up to 2^-24)."""
    nonzero: int
    rounding_error: float
    """RMS of fp16's rounding error over the layer's gradient, relative to the gradient's RMS
    (`rounding_error`)."""


def underflow_at(counts: Sequence[int], low: int, scale: float, square_sum: float | None = None) -> Underflow:
    """The shares below fp16's smallest numbers at `scale`, and the relative rounding error;
    `square_sum`: the gradient's exact sum of squares (None: estimated from the histogram)."""
    nonzero = sum(counts)
    if nonzero == 0:
        return Underflow(0.0, 0.0, 0, 0.0)
    return Underflow(count_below(counts, low, FP16_NORMAL_LOG2, scale) / nonzero,
                     count_below(counts, low, FP16_SUBNORMAL_LOG2, scale) / nonzero, nonzero,
                     rounding_error(counts, low, scale, square_sum))


def rounding_error(counts: Sequence[int], low: int, scale: float, square_sum: float | None = None) -> float:
    """sqrt(sum of squared fp16 rounding errors / sum of squared gradients) for the histogram's
    elements carried in fp16 at `scale`. Rounding to a grid of spacing d errs by d / sqrt(12) in
    RMS; fp16's spacing is 2^(e - 10) for a normal x in [2^e, 2^(e+1)) and 2^-24 below 2^-14;
    an element below 2^-24 is lost whole (its mean square over the bin, 7/3 4^e). The gradient's
    own mean square per element of a bin is 7/3 4^e too, when no exact sum is given."""
    shift = math.log2(scale)
    error = energy = 0.0
    for k, n in enumerate(counts):
        if not n:
            continue
        e = low + k + shift  # the scaled exponent
        spacing = 2.0 ** (math.floor(e) - 10) if e >= FP16_NORMAL_LOG2 else 2.0 ** FP16_SUBNORMAL_LOG2
        lost = e < FP16_SUBNORMAL_LOG2
        error += n * (7 / 3 * 4.0 ** e if lost else spacing * spacing / 12)
        energy += n * 7 / 3 * 4.0 ** e
    total = square_sum * scale * scale if square_sum else energy
    return math.sqrt(error / total) if total > 0 else 0.0


def underflows(u: Underflow, max_error: float) -> bool:
    """The rule of checks/fp16_underflow.py: fp16 carries the layer's gradient with a larger
    relative rounding error than `max_error`."""
    return u.rounding_error > max_error


def largest_safe_scale_log2(grad_max_abs: float, margin: float) -> int | None:
    """log2 of the largest power of two S with grad_max_abs * S <= FP16_MAX / margin (None when
    no gradient was measured or it is not finite)."""
    if not grad_max_abs > 0 or not math.isfinite(grad_max_abs):
        return None
    return math.floor(math.log2(FP16_MAX / (margin * grad_max_abs)))


def smallest_clearing_scale_log2(histograms: Sequence[tuple[Sequence[int], float | None]], low: int,
                                 max_error: float) -> int | None:
    """log2 of the smallest power of two (from 2^0) at which no (histogram, sum of squares)
    underflows any more (None when even 2^127 does not lift them)."""
    for s in SCALE_LOG2_RANGE:
        if not any(underflows(underflow_at(h, low, 2.0 ** s, sq), max_error) for h, sq in histograms):
            return s
    return None


def outputs_past_max(peak: float) -> str:
    """A layer's largest output against fp16's max, in words: Inf as an fp16 probe measures it."""
    if math.isinf(peak):
        return "outputs Inf in fp16 (values past its largest finite number 65504)"
    return f"outputs values up to {peak:.3g}, past fp16's largest finite number 65504"


def scale_in_use(measurements: Measurements) -> float:
    """The loss scale the probe's backward ran at: the dynamic scaler's final scale, the static
    --loss-scale, or 1 without scaling."""
    return measurements.final_loss_scale or measurements.loss_scale or 1.0
