"""fp16-overflow: values past fp16's largest finite number 65504, or a loss scale that overflows.

Detects, under `--precision fp16` (bf16 and fp32 reach 3.4e38):
* activation: a layer whose outputs are Inf: an fp16 output past 65504 is Inf (IEEE 754
  binary16). A finite output past 65504 is one autocast kept in float32 (a norm on CUDA, a layer
  run in fp32): harmless unless an fp16 op takes it, and then that op's layer shows the Inf.
  Reported once, on the first such layer in execution order (the overflow site: its Inf reaches
  every layer after it), with the number of layers whose outputs are Inf; or on the layer whose
  autocast op (FP16_OPS: linear, conv, matmul, ...) the NaN/Inf replay (measure/nonfinite_origin.py)
  names as the first to turn finite inputs into Inf, whichever ran first (an output holding NaN
  beside its Inf reads as no maximum). Severity: error. Fixes:
  use-bf16 (float32's range); keep-fp32 when the next layer is a normalization, which brings the
  values back into range when both run in float32.
* gradient: an output gradient that, times the loss scale the backward ran at, exceeds 65504: the
  scaled backward overflows (a static `--loss-scale` too large, or a dynamic scaler that backed off
  to its limit and still saw Inf). Reported on the layer with the largest scaled gradient, when no
  activation overflowed (that one is then the cause). Severity: error. Fix: loss-scaling with a
  scale that keeps the largest gradient under the max.
* scaler (transient): the dynamic scaler (`--loss-scale dynamic`, torch.amp.GradScaler semantics)
  skipped steps on Inf/NaN gradients, then measured every batch finite at a lower scale. This is
  how GradScaler finds its scale and is benign (PyTorch AMP documentation). Severity: info, no fix.

Evidence: cause, dtype_max, activation_max_abs, scaled_grad_max_abs, loss_scale, final_loss_scale,
scale_overflows, layers_past_max, op, transient (docs/findings/fp16-overflow.md). No threshold: the
limit is the format's. Only fp16 probes are checked, so a plain fp32 scan reports nothing.
"""

from __future__ import annotations

import math

from gradcheck_cli.analyse.checks.context import CheckContext
from gradcheck_cli.analyse.fp16_range import FP16_MAX, outputs_past_max, scale_in_use
from gradcheck_cli.analyse.stats import LayerStats
from gradcheck_cli.measure.records import Headroom, NonfiniteOrigin
from gradcheck_cli.report.evidence import Fp16OverflowEvidence
from gradcheck_cli.report.records import Finding, FindingKind, Severity


def check(context: CheckContext) -> list[Finding]:
    if context.config.precision != "fp16":
        return []
    measured = [x for x in context.layers if x.measured.headroom is not None]
    found = _activation_overflow(measured, context.measurements.nonfinite_origin) \
        or _gradient_overflow(measured, context)
    if found is None and context.measurements.scale_overflows > 0:
        found = _transient(context)
    return [found] if found is not None else []


FP16_OPS = frozenset({"linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                      "conv_transpose3d", "matmul", "mm", "bmm", "addmm", "baddbmm", "addbmm", "einsum"})
"""The ops torch.autocast runs in the low dtype (its "lower precision" op list, as the user calls them)."""


def _activation_overflow(layers: list[LayerStats], origin: NonfiniteOrigin | None) -> Finding | None:
    """The first layer whose outputs are Inf, or the layer whose autocast op the NaN/Inf replay
    names as the first to turn finite inputs into Inf (an Inf output also holding NaN, as a matmul
    summing +Inf and -Inf does, reads as no maximum at all)."""
    past = sorted((x for x in layers if math.isinf(_headroom(x).activation_max_abs)), key=lambda x: x.index)
    by_name = {x.name: x for x in layers}
    named = origin is not None and origin.direction == "forward" and origin.op in FP16_OPS \
        and "inf" in origin.produced and origin.module in by_name
    site = by_name[origin.module] if named and origin is not None else (past[0] if past else None)
    if site is None:
        return None
    if past and past[0].index < site.index:
        site = past[0]
    op = origin.op if named and origin is not None and origin.module == site.name else None
    evidence = Fp16OverflowEvidence("activation", FP16_MAX, activation_max_abs=math.inf,
                                    layers_past_max=len(past) or None, op=op)
    after = f"; {len(past) - 1} later layers too" if len(past) > 1 else ""
    return Finding(FindingKind.FP16_OVERFLOW, site.name, Severity.ERROR,
                   f"{site.name} ({site.type_name}) {outputs_past_max(math.inf)}{after}", evidence)


def _gradient_overflow(layers: list[LayerStats], context: CheckContext) -> Finding | None:
    scale = scale_in_use(context.measurements)
    scaled = [(_headroom(x).grad_max_abs * scale, x) for x in layers]
    over = [(g, x) for g, x in scaled if g > FP16_MAX]
    if not over:
        return None
    peak, site = max(over, key=lambda p: (p[0], -p[1].index))
    m = context.measurements
    evidence = Fp16OverflowEvidence("gradient", FP16_MAX, scaled_grad_max_abs=peak, loss_scale=scale,
                                    final_loss_scale=m.final_loss_scale, scale_overflows=m.scale_overflows)
    return Finding(FindingKind.FP16_OVERFLOW, site.name, Severity.ERROR,
                   f"{site.name} ({site.type_name}): its output gradient times the loss scale {scale:g} "
                   f"reaches {peak:.3g}, past fp16's 65504: the scaled backward overflows", evidence)


def _transient(context: CheckContext) -> Finding:
    m = context.measurements
    evidence = Fp16OverflowEvidence("scaler", FP16_MAX, loss_scale=m.loss_scale, final_loss_scale=m.final_loss_scale,
                                    scale_overflows=m.scale_overflows, transient=True)
    return Finding(FindingKind.FP16_OVERFLOW, None, Severity.INFO,
                   f"the dynamic loss scaler skipped {m.scale_overflows} step(s) on Inf/NaN gradients and "
                   f"settled at {m.final_loss_scale or 0:g} (from {m.loss_scale or 0:g}): a transient "
                   "overflow, how GradScaler finds its scale (benign)", evidence)


def _headroom(layer: LayerStats) -> Headroom:
    assert layer.measured.headroom is not None
    return layer.measured.headroom
