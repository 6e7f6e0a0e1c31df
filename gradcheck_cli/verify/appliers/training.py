"""Appliers for fixes of how the model is trained: clip-gradients, lower-lr, weight-decay.

These change no weight and no module: they change the probe's optimizer steps (measure/steps.py),
so each returns ScanConfig overrides for the re-probe. Their effect shows only over steps, so the
re-probe takes at least MIN_STEPS steps between at least MIN_BATCHES batches; when the scan itself
took fewer, the "before" is probed with the same steps minus the fix (Patch.baseline_config), so
that before and after differ by the fix alone. The user's optimizer stays, and so does its rate
for clip-gradients (docs/fixes/clip-gradients.md, docs/fixes/lower-lr.md).
"""

from __future__ import annotations

from typing import Any

from gradcheck_cli.config import ScanConfig
from gradcheck_cli.report.parameters import ClipParameters, LowerLrParameters
from gradcheck_cli.report.records import RecommendationId
from gradcheck_cli.verify.applier import Applier, ApplyContext, Patch, not_applicable

MIN_STEPS = 3
"""Fewer steps say little about a loss trend (one step cannot rise twice)."""
MIN_BATCHES = 2
"""The probe steps between batches: with one batch it takes none."""


def step_overrides(config: ScanConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The steps and batches of the re-probe, and the baseline overrides (empty when the scan
    already took them, so that its own report is the before)."""
    steps = {"steps": max(config.steps, MIN_STEPS), "batches": max(config.batches, MIN_BATCHES)}
    same = steps["steps"] == config.steps and steps["batches"] == config.batches
    return steps, ({} if same else dict(steps))


def _schedule(config: ScanConfig, steps: dict[str, Any]) -> str:
    return f"{steps['steps']} {config.optimizer} steps at lr {config.lr:g} between {steps['batches']} batches"


def clip_gradients(context: ApplyContext) -> Patch:
    params = context.recommendation.parameters
    if not isinstance(params, ClipParameters):
        return not_applicable("the recommendation carries no max_norm")
    config = context.config
    steps, baseline = step_overrides(config)
    return Patch(applied=True,
                 reason=f"gradients clipped to a total norm of {params.max_norm:g} over {_schedule(config, steps)}",
                 config={**steps, "clip_grad_norm": params.max_norm}, baseline_config=baseline)


def lower_lr(context: ApplyContext) -> Patch:
    params = context.recommendation.parameters
    config = context.config
    if not isinstance(params, LowerLrParameters):
        return not_applicable("the recommendation carries no learning rate")
    if params.lr is not None:
        lr = params.lr
    elif params.divide_by:
        lr = config.lr / params.divide_by
    else:
        return not_applicable("the recommendation names neither a learning rate nor a factor")
    steps, baseline = step_overrides(config)
    return Patch(applied=True,
                 reason=f"lr {config.lr:g} -> {lr:g} over {steps['steps']} {config.optimizer} steps "
                        f"between {steps['batches']} batches",
                 config={**steps, "lr": lr}, baseline_config=baseline)


def weight_decay(context: ApplyContext) -> Patch:
    # Weight decay acts over a training run (the weights' slow growth that the training watch
    # sees), not over the probe's few steps, and the probe's optimizer takes no decay: no re-probe
    # could show its effect, so none is claimed.
    return not_applicable("not verifiable in a probe: weight decay acts over a training run, and the "
                          "probe's optimizer steps take no decay")


APPLIERS: dict[RecommendationId, Applier] = {
    RecommendationId.CLIP_GRADIENTS: clip_gradients,
    RecommendationId.LOWER_LR: lower_lr,
    RecommendationId.WEIGHT_DECAY: weight_decay,
}
