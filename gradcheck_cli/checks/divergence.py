"""divergence: over the optimizer steps (--steps) the loss rises steadily or turns NaN/Inf.

Detects (layer null: it concerns the whole training run), from the chronological loss trace (each
probe batch, then the losses after the optimizer steps taken on it, then the next batch):
* the loss turns NaN/Inf after having been finite at the first probe batch (a NaN already at the
  start is the nonfinite finding's, not a dynamics problem); or
* steady rise: the loss rises at each of the last RISES transitions of the trace (all of them if
  the trace is shorter, and at least MIN_RISES) and ends more than GROWTH times its starting value
  above it (last - first > (GROWTH - 1) * |first|); or
* sustained rise: every loss after the first (at least MIN_SUSTAINED of them) is more than
  GROWTH times the start above it: the run jumped up and never came back, even if it wobbles
  up there (Adam at a far too large learning rate: 3.5, 4.6e7, 2.3e6, 8.9e4, ..., 2.1e3).
Why "steadily": with a learning rate below the stability limit 2/L (L the local curvature), a
gradient step lowers the loss of the batch it was taken on (the descent lemma), so a healthy run
falls or wobbles; DOMAIN.md's signature of a learning rate too large is "loss grows step over step,
then inf/NaN". One rise is ordinary batch-to-batch noise, RISES = 3 consecutive rises is not, and
GROWTH = 2 (the loss doubled) keeps the small oscillations of a learning rate near the limit
(which still trains) from counting; healthy probe batches differ by tens of percent, not 2x, and a
healthy run that overshoots once comes back below 2x its start at the next step.

Evidence: rule (nonfinite | steady-rise | sustained-rise), losses (every loss of the trace, as
text), first_loss, last_loss, rises (consecutive
rises at the end of the trace), first_nonfinite_at (index of the first NaN/Inf loss in the trace,
null if none), optimizer, lr, steps, max_update_to_weight and max_update_layer (the largest
update/weight ratio |Δw|/|w| of the first step, at the initial weights: lr * |g|/|w| for SGD, the
measured change for Adam/AdamW; healthy around 1e-3), suggested_lr (lr * 1e-3 / that ratio, one
significant figure; lr / 10 without a usable ratio: DOMAIN.md's "a learning rate 10x lower"),
initial_grad_norm (the total gradient norm before any step, the basis of clip-gradients' max_norm).
Severity: error (the run does not train at this learning rate).
"""

from __future__ import annotations

import math

from ..report import Finding, FindingKind, Number, Severity
from .context import CheckContext

RISES = 3
"""Consecutive rises at the end of the loss trace that make a steady rise."""
GROWTH = 2.0
"""The last loss must exceed the first by more than (GROWTH - 1) x |first|."""
MIN_RISES = 2
"""A shorter trace needs all its transitions to rise, but at least this many: one is not a trend."""
MIN_SUSTAINED = 2
"""Losses after the start needed before "all of them above GROWTH x the start" counts."""
HEALTHY_UPDATE = 1e-3
"""The update/weight ratio of a healthy step (DOMAIN.md; the CS231n notes, "somewhere around 1e-3")."""


def check(context: CheckContext) -> list[Finding]:
    trace = context.loss_trace
    if context.steps <= 0 or len(trace) < 2 or not math.isfinite(trace[0]):
        return []
    first_bad = next((i for i, v in enumerate(trace) if not math.isfinite(v)), None)
    finite = trace if first_bad is None else trace[:first_bad]
    rises = trailing_rises(finite)
    start = trace[0]

    def far_above(value: float) -> bool:
        return value - start > (GROWTH - 1.0) * abs(start)

    needed = max(MIN_RISES, min(RISES, len(trace) - 1))
    steady = first_bad is None and rises >= needed and far_above(trace[-1])
    sustained = first_bad is None and len(trace) - 1 >= MIN_SUSTAINED and all(map(far_above, trace[1:]))
    if first_bad is None and not steady and not sustained:
        return []
    rule = "nonfinite" if first_bad is not None else ("steady-rise" if steady else "sustained-rise")
    layer, ratio = context.first_step_update or (None, None)
    suggested = suggested_lr(context.lr, ratio)
    evidence: dict[str, Number] = {
        "rule": rule, "losses": ", ".join(f"{v:.4g}" for v in trace),
        "first_loss": trace[0], "last_loss": trace[-1], "rises": rises,
        "first_nonfinite_at": first_bad, "optimizer": context.optimizer, "lr": context.lr,
        "steps": context.steps, "max_update_to_weight": ratio, "max_update_layer": layer,
        "suggested_lr": suggested, "initial_grad_norm": context.first_grad_norm,
    }
    if first_bad is not None:
        what = (f"the loss turned NaN/Inf at value {first_bad + 1} of {len(trace)} "
                f"(from {trace[0]:.4g})")
    elif steady:
        what = f"the loss rose at each of the last {rises} steps, from {trace[0]:.4g} to {trace[-1]:.4g}"
    else:
        what = (f"after the first step the loss stayed above {GROWTH:g}x its start {trace[0]:.4g} "
                f"(peak {max(trace):.4g}, last {trace[-1]:.4g})")
    update = (f"; the first step changed {layer}'s weights by {ratio:.3g} of their norm "
              f"(healthy ~{HEALTHY_UPDATE:g})" if ratio is not None else "")
    return [Finding(FindingKind.DIVERGENCE, None, Severity.ERROR,
                    f"training diverges with {context.optimizer} at lr {context.lr:g}: {what}{update}",
                    evidence)]


def trailing_rises(values: tuple[float, ...]) -> int:
    rises = 0
    for before, after in zip(values[-2::-1], values[::-1]):
        if after > before:
            rises += 1
        else:
            break
    return rises


def suggested_lr(lr: float, ratio: float | None) -> float:
    """lr * 1e-3 / ratio, one significant figure; lr / 10 without a usable ratio."""
    if ratio is not None and math.isfinite(ratio) and ratio > 0:
        value = lr * HEALTHY_UPDATE / ratio
        if value < lr:
            return float(f"{value:.1g}")
    return float(f"{lr / 10:.1g}")
