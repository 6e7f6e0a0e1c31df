"""The evidence parts that several checks share, built from the analysis records.

report/evidence.py defines the records (report/ cannot import analyse/); this module fills them
from LayerStats and depth.py's Trend and Collapse.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gradcheck_cli.analyse.depth import Collapse, Trend
from gradcheck_cli.analyse.stats import LayerStats
from gradcheck_cli.report.evidence import CollapseRun, LayerNumbers, Margin, StackRun


def layer_numbers(layer: LayerStats) -> LayerNumbers:
    """The numbers every per-layer finding carries."""
    first = last = peak = None
    if layer.step_grad_rms:
        finite = [s for s in layer.step_grad_rms if math.isfinite(s)]
        first, last = layer.step_grad_rms[0], layer.step_grad_rms[-1]
        peak = max(finite) if finite else None
    return LayerNumbers(layer.grad_norm, layer.weight_norm, layer.grad_to_weight, layer.grad_rms,
                        output_grad_rms=layer.output_grad_rms, activation_rms=layer.output_rms,
                        first_step_grad_rms=first, last_step_grad_rms=last, peak_step_grad_rms=peak)


def stack_run(trend: Trend, residual_modules: Sequence[str]) -> StackRun:
    """The run as stack_* evidence; plain when nothing normalizes it and no residual path exists."""
    residual = bool(residual_modules)
    return StackRun(trend.signal, trend.direction, trend.gain, trend.total, len(trend.layers),
                    trend.first, trend.last, stack_normalized=trend.normalized, stack_residual=residual,
                    stack_plain=not trend.normalized and not residual)


def collapse_run(collapse: Collapse) -> CollapseRun:
    """The collapsed segment as collapse_* evidence."""
    return CollapseRun(collapse.forward_gain, collapse.forward_total, collapse.backward_gain,
                       collapse.backward_total, len(collapse.layers), collapse.layers[0],
                       collapse.layers[-1])


def margin_of(measured: float | None, threshold: float | None, borderline: float) -> Margin | None:
    """How many times past its threshold the deciding number lies, when that factor is below
    `borderline` (Thresholds.borderline; None otherwise): one place for every threshold finding to say it is borderline,
    so that a user can tell a call that another batch could flip from a clear one."""
    if measured is None or threshold is None or not measured > 0 or not threshold > 0:
        return None
    factor = max(measured / threshold, threshold / measured)
    return Margin(factor) if math.isfinite(factor) and factor < borderline else None
