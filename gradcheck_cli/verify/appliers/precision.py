"""Appliers for the mixed-precision fixes: loss-scaling, use-bf16, keep-fp32, fp32-master-weights.

loss-scaling and use-bf16 change how the probe runs, not the model: they return ScanConfig
overrides (a static `loss_scale`, "dynamic" when the scaled gradients were Inf and no scale could
be measured, or `precision` bf16 without a scale), and the re-probe measures
the same batches that way. keep-fp32 wraps the named layers of the copy so that their forward runs
in float32 with autocast off (the snippet of docs/fixes/keep-fp32.md). fp32-master-weights is not
verifiable: the probe already keeps float32 weights under autocast, which is the fix itself
(docs/fixes/fp32-master-weights.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gradcheck_cli.report.parameters import KeepFp32Parameters, LossScalingParameters, UseBf16Parameters
from gradcheck_cli.report.records import RecommendationId
from gradcheck_cli.verify.applier import Applier, ApplyContext, Patch, not_applicable


def loss_scaling(context: ApplyContext) -> Patch:
    params = context.recommendation.parameters
    if not isinstance(params, LossScalingParameters):
        return not_applicable("the recommendation carries no loss scale")
    if context.config.precision != "fp16":
        return not_applicable(f"loss scaling is for fp16; the scan probed {context.config.precision}")
    if params.backoff:
        return Patch(applied=True, reason="the fp16 backward run under a dynamic loss scale (GradScaler's backoff)",
                     config={"loss_scale": "dynamic"})
    return Patch(applied=True, reason=f"the fp16 backward run at a static loss scale of {params.init_scale:g}",
                 config={"loss_scale": params.init_scale})


def use_bf16(context: ApplyContext) -> Patch:
    if not isinstance(context.recommendation.parameters, UseBf16Parameters):
        return not_applicable("the recommendation carries no parameters")
    return Patch(applied=True, reason="autocast in bfloat16 instead of float16, without a loss scale",
                 config={"precision": "bf16", "loss_scale": None})


def keep_fp32(context: ApplyContext) -> Patch:
    params = context.recommendation.parameters
    if not isinstance(params, KeepFp32Parameters):
        return not_applicable("the recommendation names no layers")
    modules = dict(context.model.named_modules())
    missing = [name for name in params.layers if name not in modules]
    if missing:
        return not_applicable(f"no layer named {', '.join(missing)} in the model")
    device_type = torch.device(context.config.device).type
    for name in params.layers:
        module = modules[name]
        module.forward = in_fp32(module.forward, device_type)  # type: ignore[method-assign]
    return Patch(applied=True, reason=f"{', '.join(params.layers)} run in float32 with autocast off")


def in_fp32(forward: Callable[..., Any], device_type: str) -> Callable[..., Any]:
    """`forward` run with autocast off and its floating-point tensor arguments in float32."""
    def run(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type, enabled=False):
            wide = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
            return forward(*wide, **kwargs)
    return run


def fp32_master_weights(context: ApplyContext) -> Patch:
    return not_applicable("not verifiable in a probe: the probe keeps float32 weights under autocast, which is "
                          "this fix; the finding says what weights stored in bf16 would lose")


APPLIERS: dict[RecommendationId, Applier] = {
    RecommendationId.LOSS_SCALING: loss_scaling,
    RecommendationId.USE_BF16: use_bf16,
    RecommendationId.KEEP_FP32: keep_fp32,
    RecommendationId.FP32_MASTER_WEIGHTS: fp32_master_weights,
}
