"""The fixes that the training watch's findings over time justify: weight-decay, with its value.

The scan's fixes (fixes.py) come from the measured batches; the watch adds the ones its timeline
(analyse/timeline.py) justifies, ranked together with them by fixes.rank.

weight-growth -> weight-decay (docs/fixes/weight-decay.md). Decoupled weight decay (AdamW, and
SGD's weight_decay alike) multiplies every weight by (1 - lr x weight_decay) per step, so it takes
about lr x weight_decay off the log weight norm per step. To offset the measured growth rate r
(WeightGrowthEvidence.rate, the slope of the log weight norm per step) at the run's learning rate,
weight_decay = the decay the run had + r / lr, rounded up to one significant digit and kept within
AdamW's usual range [weight_decay_min, weight_decay_max] (0.01-0.1). Above that range decay alone
cannot offset the growth, and the why says to lower the learning rate as well. Without a learning
rate (a watch without an optimizer) the value is weight_decay_min, AdamW's default. Pure: no torch
(the optimizer's settings are read as plain attributes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gradcheck_cli.analyse.cause_fixes import Fix
from gradcheck_cli.analyse.fixes import rank, to_recommendation
from gradcheck_cli.analyse.thresholds import DEFAULTS, Thresholds
from gradcheck_cli.report.evidence import WeightGrowthEvidence
from gradcheck_cli.report.parameters import WeightDecayParameters
from gradcheck_cli.report.records import Finding, FindingKind, Recommendation, RecommendationId


@dataclass(frozen=True)
class OptimizerSettings:
    """What the fix needs of the user's optimizer, as plain numbers."""

    name: str
    lr: float | None
    """The first parameter group's learning rate at the end of the watch."""
    weight_decay: float


def settings_of(optimizer: Any) -> OptimizerSettings | None:
    """The optimizer's class name, learning rate and weight decay (first parameter group)."""
    if optimizer is None:
        return None
    groups = getattr(optimizer, "param_groups", None) or [{}]
    lr, decay = groups[0].get("lr"), groups[0].get("weight_decay", 0.0)
    return OptimizerSettings(type(optimizer).__name__, float(lr) if lr is not None else None,
                             float(decay) if decay else 0.0)


def weight_decay_fix(layer: str | None, e: WeightGrowthEvidence, settings: OptimizerSettings | None,
                     t: Thresholds = DEFAULTS) -> Fix:
    """weight-decay whose value offsets the growth `e` measured (module docstring)."""
    lr = settings.lr if settings is not None and settings.lr else None
    had = settings.weight_decay if settings is not None else 0.0
    needed = had + max(e.rate, 0.0) / lr if lr is not None else None
    value = t.weight_decay_min if needed is None else min(max(_round_up(needed), t.weight_decay_min),
                                                          t.weight_decay_max)
    why = (f"{layer}'s weight norm grew x{e.weight_total:.3g} from step {e.step} to {e.last_step} "
           f"({e.rate:.3g} per step in log) and its gradient norm x{e.grad_total:.3g} with it")
    if needed is None:
        why += f"; the learning rate is unknown: weight_decay={value:g}, AdamW's default"
    elif needed > t.weight_decay_max:
        why += (f"; offsetting it at lr={lr:g} needs weight_decay={needed:.3g}, above the usual "
                f"{t.weight_decay_max:g}: use {value:g} and lower the learning rate as well")
    else:
        why += f"; at lr={lr:g}, weight_decay={value:g} shrinks the weights by that much per step"
    parameters = WeightDecayParameters(value, e.rate, lr, settings.name if settings is not None else None)
    return Fix(RecommendationId.WEIGHT_DECAY, (layer,) if layer else (), why, parameters)


def with_timeline_fixes(recommendations: Sequence[Recommendation], findings: Sequence[Finding],
                        settings: OptimizerSettings | None, t: Thresholds = DEFAULTS) -> tuple[Recommendation, ...]:
    """`recommendations` plus the timeline's fixes for `findings` (an id already there is kept),
    ranked by fixes.rank."""
    have = {r.id for r in recommendations}
    added = [to_recommendation(weight_decay_fix(f.layer, f.evidence, settings, t)) for f in findings
             if f.kind is FindingKind.WEIGHT_GROWTH and isinstance(f.evidence, WeightGrowthEvidence)]
    added = [r for r in added[:1] if r.id not in have]
    return rank([*recommendations, *added], findings)


def _round_up(value: float) -> float:
    """`value` rounded up to one significant digit: 0.0213 -> 0.03, 0.1 stays."""
    if value <= 0:
        return 0.0
    scale = 10.0 ** math.floor(math.log10(value))
    return math.ceil(round(value / scale, 9)) * scale
