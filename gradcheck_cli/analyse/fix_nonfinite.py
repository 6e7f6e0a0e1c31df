"""Pure: the fixes for NaN/Inf and for a diverging run, read from their typed evidence.

The fix follows the cause (checks/nonfinite.py, docs/fixes/guard-nonfinite.md): guard-nonfinite
names the unsafe op and its module; an overflow is the end of a growth, so clip-gradients,
lower-lr and the init fixes; NaN in the batch is check-inputs. A diverging run
(checks/divergence.py) gets lower-lr at the rate derived from its steps and clip-gradients at the
norm measured before any step. Each function returns `Fix` candidates (cause_fixes.Fix).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gradcheck_cli.analyse.cause_fixes import Fix, init_fixes
from gradcheck_cli.analyse.fix_gradients import clip_fix, names, round_sig
from gradcheck_cli.analyse.stats import LayerStats
from gradcheck_cli.analyse.thresholds import Thresholds, quote
from gradcheck_cli.report.evidence import DivergenceEvidence, NonfiniteEvidence, OriginFacts
from gradcheck_cli.report.parameters import (
    GUARD_BOUNDS,
    CheckInputsParameters,
    ClipParameters,
    GuardParameters,
    LowerLrParameters,
)
from gradcheck_cli.report.records import RecommendationId

R = RecommendationId

_GUARD_OPS = (
    ("log", ("log",)), ("sqrt", ("sqrt", "rsqrt")),
    ("div", ("div", "true_divide", "floor_divide", "reciprocal", "remainder", "fmod")),
    ("exp", ("exp", "expm1")), ("pow", ("pow", "float_power")),
)
"""Guard families in matching order: an op matches by name (trailing _ dropped) or by prefix."""
_MASKED_OPS = ("scaled_dot_product_attention", "multi_head_attention_forward")
OPTIMIZERS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}


def check_inputs_fix() -> Fix:
    return Fix(R.CHECK_INPUTS, (), "the probe batch or its target contains NaN/Inf before the model runs",
               CheckInputsParameters())


def nonfinite_fixes(evidence: NonfiniteEvidence | None, flagged: Sequence[LayerStats],
                    layers: Sequence[LayerStats], t: Thresholds) -> list[Fix]:
    """guard-nonfinite for an unsafe op, a backward or fully masked rows; clip-gradients, lower-lr
    and the init fixes for an overflow or NaN weights. `flagged`: the affected layers."""
    origin = evidence.origin if evidence is not None else None
    if evidence is not None:  # one finding per origin, the affected layers in its evidence
        affected = set(evidence.affected_layers)
        flagged = [x for x in layers if x.name in affected]
    if origin is None:
        why = f"{len(flagged)} layers get NaN/Inf gradients; no single op could be named"
        return [Fix(R.GUARD_NONFINITE, names(flagged), why, GuardParameters(None, None, "generic"))]
    where = "the loss" if origin.origin == "(loss)" else f"'{origin.origin}'"
    if origin.after and origin.after != origin.origin and origin.origin != "(loss)":
        where += f" (right after '{origin.after}')"
    if origin.cause in ("overflow", "weights"):
        return _growth_fixes(origin, where, flagged, layers, t)
    if origin.cause == "all-masked":
        guard = origin.op if origin.op in _MASKED_OPS else "softmax"
        return [Fix(
            R.GUARD_NONFINITE, (origin.origin,),
            f"`{origin.op}` in {where} gets {origin.masked_rows} of {origin.rows} rows with "
            "every position masked (-inf): the softmax of such a row is 0/0 = NaN. Not an overflow "
            f"(its finite inputs reach {_number(origin.input_max_abs)}): mask with a large negative finite "
            "value, or guard fully masked rows", GuardParameters(origin.op, origin.origin, guard))]
    op = origin.op
    if origin.direction == "backward":
        why = (f"the backward of `{op}` in {where} is the first to return NaN/Inf gradients from a "
               "finite incoming gradient: " + ("check that custom backward for 0/0, division by zero "
                                               "and log/sqrt at 0" if op.endswith("Backward") else
                                               "its derivative is infinite at these inputs"))
    else:
        why = (f"`{op}` in {where} is the first op to output {_produced(origin.produced)} "
               f"from finite inputs (max |x| {_number(origin.input_max_abs)})")
    guard = next((family for family, ops in _GUARD_OPS if op.rstrip("_") in ops or op.startswith(ops[0])),
                 "generic")
    named = origin.origin != "(unknown)"
    return [Fix(R.GUARD_NONFINITE, (origin.origin,) if named else names(flagged), why,
                GuardParameters(op, origin.origin, guard, GUARD_BOUNDS.get(guard)))]


def _growth_fixes(origin: OriginFacts, where: str, flagged: Sequence[LayerStats],
                  layers: Sequence[LayerStats], t: Thresholds) -> list[Fix]:
    """An overflow (or NaN weights) ends a growth: clip it, lower the rate 10x, fix the init."""
    what = (f"`{origin.op}` in {where} overflowed to {_produced(origin.produced)}: "
            f"its inputs had already reached {_number(origin.input_max_abs)}") if origin.cause == "overflow" \
        else f"the weights of {where} are already NaN/Inf"
    dense = [x for x in layers if x.role == "dense"]
    fixes = [clip_fix(flagged or dense, layers, what, t), Fix(
        R.LOWER_LR, names(flagged or dense),
        f"{what}; smaller steps keep the weights, and so the activations, from growing out of range",
        LowerLrParameters(None, divide_by=1 / t.lr_cut))]
    if origin.cause == "overflow":  # weights made NaN by steps say nothing about the init
        fixes += init_fixes((), dense, layers)
    return fixes


def divergence_fixes(ev: DivergenceEvidence, t: Thresholds) -> list[Fix]:
    """lower-lr with the rate derived from the steps before the loss rose (checks/divergence.py:
    their largest update/weight ratio brought to ~t.healthy_update, within lr x t.lr_floor..lr x
    t.lr_cut), and clip-gradients at the norm measured before any step."""
    ratio = ev.max_update_to_weight
    healthy, floor, cut = quote(t.healthy_update), f"lr/{1 / t.lr_floor:g}", f"{1 / t.lr_cut:g}x lower"
    moved = (f"before the loss rose, a step changed {ev.max_update_layer}'s weights by "
             f"{_number(ratio)} of their norm")
    basis = {
        "update-ratio": (f"{moved}; lr {_number(ev.lr)} x {healthy} / {_number(ratio)} brings that near the "
                         f"healthy {healthy}"),
        "floor": (f"{moved}, more than the weights themselves: lr x {healthy} / {_number(ratio)} would be below "
                  f"{floor}, so the rate stops at {floor} (re-scan at it and read the update/w column: a "
                  f"ratio still far above {healthy} means gradients out of scale, which the init and clip fixes "
                  "address, not a rate)"),
    }.get(ev.suggested_lr_basis, f"a learning rate {cut} (the step ratio asks for no more)"
          if isinstance(ratio, float) and math.isfinite(ratio) else f"no step ratio to calibrate on, so {cut}")
    optimizer = OPTIMIZERS.get(ev.optimizer or "sgd", ev.optimizer or "sgd")
    fixes = [Fix(R.LOWER_LR, (), f"the loss diverges at lr {_number(ev.lr)}: {basis}",
                 LowerLrParameters(ev.suggested_lr, optimizer=optimizer))]
    norm = ev.initial_grad_norm
    if isinstance(norm, float) and math.isfinite(norm) and norm > 0:
        max_norm = round_sig(norm)
        fixes.append(Fix(
            R.CLIP_GRADIENTS, (),
            f"the total gradient norm before any step was {_number(norm)}; clipping at max_norm="
            f"{max_norm:g} bounds every step to that size however the loss grows (Pascanu et al. 2013)",
            ClipParameters(max_norm)))
    return fixes


def _produced(value: object) -> str:
    return {"nan": "NaN", "inf": "Inf"}.get(str(value), "NaN/Inf")


def _number(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) else str(value)
