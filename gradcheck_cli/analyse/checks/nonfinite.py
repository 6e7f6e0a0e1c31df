"""nonfinite: NaN or Inf in a layer's gradient (or in the loss), with where it was born and why.

Detects: any gradient element that is NaN/Inf, and a non-finite loss. NaN is usually a consequence
of explosion or of one unsafe op, not a cause (docs/findings/nonfinite.md), so the finding names the origin, found
by a diagnostic replay of the first failing batch (nonfinite_origin.py; never run on a healthy
model):
* forward: the first op, in execution order, whose output is NaN/Inf while all its inputs were
  finite, and the innermost module running it. That module's inputs were finite (every earlier op
  was) and its output is not: it is the first module in execution order whose output turns
  non-finite from finite inputs. "(loss)" when the op ran in the loss, outside the model.
* backward, when the forward (module outputs and loss) was clean: the first autograd node, in
  backward order, that returned a NaN/Inf gradient from a finite incoming gradient (sqrt or pow at
  0, log at 0, a custom backward), with the op and module that created it in the forward.

Cause (evidence `cause`), from the op and the magnitude of its inputs:
* "overflow": the op's inputs already reached sqrt(dtype max) (1.8e19 in float32, 256 in float16):
  from there one product overflows the range, so the NaN/Inf is the end of a growth (explosion,
  an unbounded activation scale, huge raw inputs), not a flaw of the op. Also every NaN/Inf made
  by an op that is not numerically unsafe (linear, matmul, add, mul, sum, ...): such arithmetic can
  only leave the range by overflowing it. (IEEE 754 binary32/binary16 ranges.)
* "unsafe-op": an op of UNSAFE_OPS (log, sqrt, div, pow, exp, ...: docs/findings/nonfinite.md, "numerically unsafe
  ops": log/sqrt/div of non-positive values, exp overflow, 0/0) whose inputs were moderate.
* "backward": the forward was clean and an UNSAFE_OPS op's derivative was infinite or undefined
  at a finite input (d sqrt(u)/du at u = 0, d log(u)/du at 0, ...), or a custom
  autograd.Function's backward (op named after its node, "...Backward") returned NaN/Inf.
* "weights": the failing batch met weights that were already NaN/Inf (after diverged --steps, or
  from a checkpoint); origin is the first such layer in execution order, and no op is to blame.
* "all-masked": a softmax (or an attention op) over a row in which every position is masked
  (-inf scores, or a key_padding_mask / attn_mask that leaves a query no key): exp(-inf) = 0 in
  every position, 0/0 = NaN. Neither an overflow nor a growth: the finite scores are moderate.
Fixes follow the cause (fixes.py): guard-nonfinite for unsafe-op, backward and all-masked (for the
last, a finite mask value or a guard for fully masked rows); clip-gradients, lower-lr and the init
fixes for overflow and weights (divergence, when found, sets lower-lr).

One origin is one finding: a NaN spreads to every layer behind (and in front of) its origin, so the
check reports one finding, at the origin module when it is a layer (the whole model when the op
ran outside every layer; the first affected layer when no origin was found), with the affected
layers in its evidence; each layer's status still shows
it. When a later op or loss_fn raised on the NaN (`binary_cross_entropy` refuses NaN inputs), the
scan stops at that batch and the finding carries what raised (probe.py).

Evidence: nonfinite_grads (elements, summed over batches and layers), params (of the affected
layers), nonfinite_losses, affected_layers (", "-joined names, execution order), affected_count,
and from the origin: origin (module), origin_type, op, direction, cause, after (the module that
finished just before the op), input_max_abs (largest |input| of the op, or of the gradient it
received; for all-masked, of its finite inputs), produced (nan | inf | nan+inf); masked_rows and
rows for all-masked; raised when a later op or loss_fn raised. Without an origin (the batch held
NaN/Inf: see nonfinite-input; or the replay did not reproduce it) origin is null and cause
"unknown".
Severity: error.
"""

from __future__ import annotations

import math

from gradcheck_cli.analyse.checks.context import CheckContext
from gradcheck_cli.analyse.stats import LayerStats
from gradcheck_cli.measure.records import NonfiniteOrigin
from gradcheck_cli.report.evidence import NonfiniteEvidence, OriginFacts
from gradcheck_cli.report.records import Finding, FindingKind, Severity, Status

UNSAFE_OPS = frozenset({
    "log", "log_", "log2", "log10", "log1p", "sqrt", "sqrt_", "rsqrt", "div", "div_", "true_divide",
    "floor_divide", "reciprocal", "reciprocal_", "remainder", "fmod", "pow", "pow_", "float_power",
    "exp", "exp_", "exp2", "expm1", "acos", "asin", "atanh", "acosh", "logit", "xlogy", "lgamma",
    "digamma", "polygamma", "erfinv", "tan", "cosh", "sinh", "norm", "cdist", "dist",
    "binary_cross_entropy", "kl_div", "poisson_nll_loss", "gaussian_nll_loss",
})
"""Ops that map some finite inputs to NaN/Inf (a non-positive log/sqrt argument, a zero divisor,
an exp beyond ~88.7 in float32, a probability outside [0, 1]) or whose derivative is unbounded."""


def classify_cause(origin: NonfiniteOrigin) -> str:
    """overflow | unsafe-op | backward | weights | all-masked (see the module docstring)."""
    if origin.direction == "weights":
        return "weights"
    if origin.masked_rows:
        return "all-masked"
    if origin.input_max_abs >= math.sqrt(origin.dtype_max):
        return "overflow"
    if origin.direction == "backward" and (origin.op in UNSAFE_OPS or origin.op.endswith("Backward")):
        return "backward"  # an unsafe op's derivative, or a custom backward (named "...Backward")
    return "unsafe-op" if origin.op in UNSAFE_OPS else "overflow"


def origin_facts(origin: NonfiniteOrigin) -> OriginFacts:
    """The replay's origin and its cause, as evidence (masked_rows/rows only for all-masked)."""
    return OriginFacts(origin.module, origin.module_type, origin.op, origin.direction, classify_cause(origin),
                       origin.after, origin.input_max_abs, origin.produced,
                       masked_rows=origin.masked_rows or None, rows=origin.rows if origin.masked_rows else None,
                       raised=origin.raised or None)


def describe_origin(origin: NonfiniteOrigin) -> str:
    """`log` in (root) (LogFilterbankClassifier, after 'frontend') turned finite inputs ... into NaN."""
    where = "the loss" if origin.module == "(loss)" else (
        f"{origin.module} ({origin.module_type})" if origin.module_type else origin.module)
    after = f", after '{origin.after}'" if origin.after and origin.module != origin.after else ""
    cause = classify_cause(origin)
    if cause == "weights":
        return (f"the weights of {where} are already {_produced(origin.produced)} (diverged optimizer "
                "steps, or a corrupt checkpoint): every op that reads them is non-finite")
    if cause == "all-masked":
        return (f"`{origin.op}` in {where}{after} outputs NaN: all positions masked in "
                f"{origin.masked_rows} of {origin.rows} rows (every score -inf, so the softmax is "
                f"0/0; its finite inputs reach only {origin.input_max_abs:.3g})")
    if origin.direction == "backward":
        what = (f"the backward of `{origin.op}` in {where}{after} is the first to return "
                f"{_produced(origin.produced)} gradients (the incoming gradient was finite, "
                f"max |g| {origin.input_max_abs:.3g})")
    else:
        what = (f"`{origin.op}` in {where}{after} is the first op to output {_produced(origin.produced)} "
                f"from finite inputs (max |x| {origin.input_max_abs:.3g})")
    why = {"overflow": f"overflow: the values had already grown out of the {origin.dtype} range",
           "unsafe-op": "a numerically unsafe op",
           "backward": "a custom backward that returns NaN/Inf here" if origin.op.endswith("Backward")
           else "its derivative is infinite at these inputs"}[cause]
    return f"{what}: {why}"


def check(context: CheckContext) -> list[Finding]:
    origin = context.measurements.nonfinite_origin
    bad_losses = sum(1 for v in context.measurements.losses if not math.isfinite(v))
    affected = [layer for layer, _ in context.layers_with(Status.NONFINITE)]
    if not affected and not bad_losses:
        return []
    evidence = NonfiniteEvidence(
        sum(layer.nonfinite_grads for layer in affected), sum(layer.params for layer in affected), bad_losses,
        tuple(layer.name for layer in affected), len(affected),
        origin_facts(origin) if origin is not None else None)
    return [Finding(FindingKind.NONFINITE, _finding_layer(origin, affected, context), Severity.ERROR,
                    _message(origin, affected, bad_losses, len(context.measurements.losses)), evidence)]


def _finding_layer(origin: NonfiniteOrigin | None, affected: list[LayerStats],
                   context: CheckContext) -> str | None:
    """The origin module when it is a layer of the model (None, the whole model, when the origin
    is an op outside every layer: the root's forward, the loss); without an origin, the first
    affected layer in execution order."""
    if origin is not None:
        return origin.module if origin.module in {layer.name for layer in context.layers} else None
    return affected[0].name if affected else None


def _message(origin: NonfiniteOrigin | None, affected: list[LayerStats], bad_losses: int,
             batches: int) -> str:
    if origin is not None and origin.raised:
        what = f"the loss could not be computed: {origin.raised}"
    elif affected:
        names = ", ".join(layer.name for layer in affected[:3])
        more = f" and {len(affected) - 3} more" if len(affected) > 3 else ""
        elements = sum(layer.nonfinite_grads for layer in affected)
        count = f"{len(affected)} layer" + ("s" if len(affected) > 1 else "")
        what = f"{count} ({names}{more}) get NaN/Inf gradients ({elements} elements)"
    else:
        what = f"the loss is NaN/Inf on {bad_losses} of {batches} batches"
    return f"{what}; {describe_origin(origin)}" if origin else what


def _produced(produced: str) -> str:
    return {"nan": "NaN", "inf": "Inf"}.get(produced, "NaN/Inf")
