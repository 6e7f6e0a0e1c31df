"""divergence: over the optimizer steps (--steps) the loss rises steadily or turns NaN/Inf.

Detects (layer null: it concerns the whole training run), from the losses of the probe (each probe
batch, then the optimizer steps taken on it, then the next batch); the first rule that matches:
* nonfinite: the loss turns NaN/Inf after having been finite at the first probe batch (a NaN
  already at the start is the nonfinite finding's, not a dynamics problem);
* same-batch-rise: compounded over consecutive optimizer steps, the loss rose more than
  divergence_same_batch_rise (100) times, each step judged on the batch it was taken on (probe.py
  measures that batch's loss before the steps and after each of them). This is the descent lemma
  read directly: with a learning rate below the stability limit 2/L (L the local curvature) a
  gradient step lowers the loss of the batch it was taken on, so a healthy run's same-batch factors
  are <= ~1 (dropout's fresh masks add tens of percent, not 100x); above the limit the error along
  the sharpest direction is multiplied by |1 - lr L| > 1 per step and the loss grows geometrically.
  Comparing a step's loss with the *next* batch's instead mixes the step with the data: a rise of
  1e5x could end on a batch whose loss is a little lower than the previous value, and a rule on the
  trailing transitions then missed it in some seeds and not others. The window is the largest
  product over any run of consecutive steps (from the lowest point), so it does not matter where the
  divergence starts relative to the batches. Losses <= 0 (negative log-likelihoods) have no ratio:
  their steps count as factor 1 and the two rules below cover them;
* steady-rise: the loss rises at each of the last divergence_rises transitions of the trace (all
  of them if the trace is shorter, and at least divergence_min_rises) and ends more than
  divergence_growth times its starting value above it (last - first > (divergence_growth - 1) *
  |first|); or
* sustained-rise: every loss after the first (at least divergence_min_sustained of them) is more
  than divergence_growth times the start above it: the run jumped up and never came back, even if
  it wobbles up there (Adam at a far too large learning rate: 3.5, 4.6e7, 2.3e6, 8.9e4, ..., 2.1e3).
Why divergence_rises and divergence_growth (analyse/thresholds.py): the signature of a
learning rate too large is "loss grows step over step, then inf/NaN". One rise is ordinary
batch-to-batch noise, 3 consecutive rises is not, and a growth of 2 (the loss doubled) keeps the
small oscillations of a learning rate near the limit (which still trains) from counting; healthy
probe batches differ by tens of percent, not 2x.

The suggested learning rate (lower-lr) comes from the steps taken before the loss started rising
(the pre-divergence steps: every step up to and including the first one that raised the loss of
its batch; all of them if none did): their largest update/weight ratio r = |Δw| / |w| was measured
at weights the divergence had not yet moved. The ratio is linear in lr at given weights and
gradients (SGD: Δw = lr g; Adam: Δw ~ lr m / sqrt(v)), so lr x healthy_update / r is the largest
rate at which none of those steps would have moved any layer by more than the healthy ~1e-3 of its
norm. It is clamped to [lr / 1000, lr / 10] (lr_floor, lr_cut):
* at most lr / 10, "a learning rate 10x lower" (docs/fixes/lower-lr.md): the run diverged, so the rate is past
  the stability limit, and a cut smaller than 10x leaves it oscillating near that limit;
* at least lr / 1000 (lr_floor): a derived rate below it means r > 1, one step moved a layer by more
  than its own norm before anything diverged. That is not a learning rate mis-set by some factor
  but gradients out of scale (an init too large makes every gradient ~1e7: lr would come out at
  ~1e-9), and a rate that tames them would freeze every layer once the cause (init-scale,
  clip-gradients) is fixed. The evidence says when the clamp applied (suggested_lr_basis).

Evidence: rule (nonfinite | same-batch-rise | steady-rise | sustained-rise), losses (every loss of
the trace, as text), first_loss, last_loss, rises (consecutive rises at the end of the trace),
first_nonfinite_at (index of the first NaN/Inf loss in the trace, null if none), same_batch_rise
(the largest compounded same-batch factor) and rise_steps (its length in steps), optimizer, lr,
steps, pre_divergence_steps, max_update_to_weight and max_update_layer (the largest update/weight
ratio of the pre-divergence steps and its layer; lr * |g|/|w| for SGD, the measured change for
Adam/AdamW; healthy around 1e-3), suggested_lr (one significant figure) and suggested_lr_basis
(update-ratio | floor | 10x-lower), initial_grad_norm (the total gradient norm before any step,
the basis of clip-gradients' max_norm). Severity: error (the run does not train at this rate).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gradcheck_cli.analyse.checks.context import CheckContext
from gradcheck_cli.analyse.thresholds import DEFAULTS, Thresholds
from gradcheck_cli.report.evidence import DivergenceEvidence
from gradcheck_cli.report.records import Finding, FindingKind, Severity


def check(context: CheckContext) -> list[Finding]:
    measured, config = context.measurements, context.config
    trace = measured.loss_trace
    if config.steps <= 0 or len(trace) < 2 or not math.isfinite(trace[0]):
        return []
    first_bad = next((i for i, v in enumerate(trace) if not math.isfinite(v)), None)
    factors = step_factors(measured.step_rounds)
    went_nonfinite = first_bad is not None or any(not math.isfinite(v) for r in measured.step_rounds for v in r)
    finite = trace if first_bad is None else trace[:first_bad]
    rises = trailing_rises(finite)
    start, t = trace[0], context.thresholds

    def far_above(value: float) -> bool:
        return value - start > (t.divergence_growth - 1.0) * abs(start)

    rise, rise_steps = largest_rise(factors)
    needed = max(t.divergence_min_rises, min(t.divergence_rises, len(trace) - 1))
    steady = first_bad is None and rises >= needed and far_above(trace[-1])
    sustained = (first_bad is None and len(trace) - 1 >= t.divergence_min_sustained
                 and all(map(far_above, trace[1:])))
    rule = ("nonfinite" if went_nonfinite else "same-batch-rise" if rise > t.divergence_same_batch_rise
            else "steady-rise" if steady else "sustained-rise" if sustained else None)
    if rule is None:
        return []
    pre = pre_divergence(measured.step_rounds)
    layer, ratio = largest_update(measured.step_updates[:pre]) if measured.step_updates \
        else (measured.first_step_update or (None, None))
    suggested = suggested_lr(config.lr, ratio, t)
    evidence = DivergenceEvidence(
        rule, tuple(trace), trace[0], trace[-1], rises, first_bad, rise, rise_steps, config.optimizer,
        config.lr, config.steps, pre if measured.step_updates else 1, ratio, layer, suggested,
        suggested_lr_basis(config.lr, ratio, t), measured.first_grad_norm)
    if rule == "nonfinite":
        where = f"at value {first_bad + 1} of {len(trace)}" if first_bad is not None else \
            "on the batch the last steps were taken on"
        what = f"the loss turned NaN/Inf {where} (from {trace[0]:.4g})"
    elif rule == "same-batch-rise":
        what = (f"over {rise_steps} consecutive steps the loss rose {rise:.3g}x, each step measured on "
                f"the batch it was taken on (from {trace[0]:.4g}, peak {max(trace):.4g})")
    elif steady:
        what = f"the loss rose at each of the last {rises} steps, from {trace[0]:.4g} to {trace[-1]:.4g}"
    else:
        what = (f"after the first step the loss stayed above {t.divergence_growth:g}x its start {trace[0]:.4g} "
                f"(peak {max(trace):.4g}, last {trace[-1]:.4g})")
    update = (f"; before the loss rose, a step changed {layer}'s weights by {ratio:.3g} of their norm "
              f"(healthy ~{t.healthy_update:g})" if ratio is not None and math.isfinite(ratio) else "")
    return [Finding(FindingKind.DIVERGENCE, None, Severity.ERROR,
                    f"training diverges with {context.config.optimizer} at lr {context.config.lr:g}: {what}{update}",
                    evidence)]


def trailing_rises(values: tuple[float, ...]) -> int:
    rises = 0
    for before, after in zip(values[-2::-1], values[::-1]):
        if after > before:
            rises += 1
        else:
            break
    return rises


def step_factors(rounds: Sequence[Sequence[float]]) -> list[float]:
    """Per optimizer step, in order: its batch's loss after / before it. A step with a loss <= 0 or
    a non-finite one on either side has no ratio and counts as 1 (the nonfinite rule sees NaN)."""
    factors = []
    for losses in rounds:
        for before, after in zip(losses, losses[1:]):
            usable = before > 0 and after > 0 and math.isfinite(before) and math.isfinite(after)
            factors.append(after / before if usable else 1.0)
    return factors


def largest_rise(factors: Sequence[float]) -> tuple[float, int]:
    """The largest product of consecutive factors, and how many steps it spans ((1.0, 0) when no
    step raised the loss): Kadane's maximum subarray on the logs."""
    best, best_len, run, run_len = 0.0, 0, 0.0, 0
    for factor in factors:
        run, run_len = (run + math.log(factor), run_len + 1) if run > 0 else (math.log(factor), 1)
        if run > best:
            best, best_len = run, run_len
    return math.exp(best), best_len


def pre_divergence(rounds: Sequence[Sequence[float]]) -> int:
    """Number of steps before the loss started rising: up to and including the first step that
    raised its batch's loss (or turned it NaN/Inf); every step if none did."""
    count = 0
    for losses in rounds:
        for before, after in zip(losses, losses[1:]):
            count += 1
            if not math.isfinite(after) or after > before:
                return count
    return count


def largest_update(updates: Sequence[tuple[str, float]]) -> tuple[str | None, float | None]:
    """The largest finite update/weight ratio among `updates` and its layer."""
    finite = [(ratio, layer) for layer, ratio in updates if math.isfinite(ratio)]
    if not finite:
        return None, None
    ratio, layer = max(finite)
    return layer, ratio


def suggested_lr(lr: float, ratio: float | None, t: Thresholds = DEFAULTS) -> float:
    """lr * healthy_update / ratio within [lr * lr_floor, lr * lr_cut], one significant figure;
    lr * lr_cut without a usable ratio (see the module docstring)."""
    floor, cut = lr * t.lr_floor, lr * t.lr_cut
    if ratio is not None and math.isfinite(ratio) and ratio > 0:
        value = min(max(lr * t.healthy_update / ratio, floor), cut)
    else:
        value = cut
    rounded = float(f"{value:.1g}")
    # Rounding must not cross the bounds it was clamped to (lr 0.45: lr / 1000 = 4.5e-4 -> 4e-4).
    return rounded if floor <= rounded <= cut else float(f"{value:.2g}")


def suggested_lr_basis(lr: float, ratio: float | None, t: Thresholds = DEFAULTS) -> str:
    """update-ratio (lr * healthy_update / ratio), floor (clamped at lr * lr_floor) or 10x-lower."""
    if ratio is None or not math.isfinite(ratio) or ratio <= 0:
        return "10x-lower"
    value = lr * t.healthy_update / ratio
    if value < lr * t.lr_floor:
        return "floor"
    return "update-ratio" if value < lr * t.lr_cut else "10x-lower"
